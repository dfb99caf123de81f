// Startup, liveness and readiness probes, with Kubernetes' timing and thresholds (period 10 s,
// timeout 1 s, success 1, failure 3 unless set). Each probe is a timer chain on the agent, not
// a process in the unit: exec probes run `runc exec`, HTTP and TCP probes connect from the
// agent to the pod's IP (the pod shares its network namespace with the cell, or is reachable),
// and so do gRPC probes (grpc-probe.ts).
import { execFile } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import { connect } from 'node:net';
import type { Container, Handler, PortRef, Probe } from '@cello/proto/cell';
import { grpcHealthCheck } from './grpc-probe.js';

export interface ProbeResult {
  ok: boolean;
  message: string;
}

export interface ProbeTarget {
  runcBinary: string;
  runcRoot: string;
  containerId: string;
  podIP: string;
  container: Container;
}

function resolvePort(ref: PortRef | undefined, c: Container): number {
  const v = ref?.value;
  if (!v) throw new Error('probe has no port');
  if (v.$case === 'number') return v.value;
  const p = c.ports.find((x) => x.name === v.value);
  if (!p) throw new Error(`probe names port "${v.value}" that the container does not declare`);
  return p.containerPort;
}

export function runHandler(h: Handler, t: ProbeTarget, timeoutMs: number): Promise<ProbeResult> {
  const a = h.action;
  if (!a) return Promise.resolve({ ok: false, message: 'probe has no action' });
  switch (a.$case) {
    case 'exec':
      return new Promise((resolve) => {
        execFile(t.runcBinary, ['--root', t.runcRoot, 'exec', t.containerId, ...a.value.command], { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
          if (!err) return resolve({ ok: true, message: '' });
          const out = `${String(stdout)}${String(stderr)}`.trim().slice(0, 1024);
          if ((err as { killed?: boolean }).killed) return resolve({ ok: false, message: `command timed out after ${timeoutMs} ms` });
          resolve({ ok: false, message: `command ${JSON.stringify(a.value.command)} exited with ${err.code ?? 'error'}${out ? `: ${out}` : ''}` });
        });
      });
    case 'httpGet': {
      const g = a.value;
      let port: number;
      try {
        port = resolvePort(g.port, t.container);
      } catch (err) {
        return Promise.resolve({ ok: false, message: (err as Error).message });
      }
      const scheme = (g.scheme || 'HTTP').toUpperCase();
      const headers: Record<string, string> = { 'User-Agent': 'kube-probe/cello', Accept: '*/*' };
      for (const hd of g.httpHeaders) headers[hd.name] = hd.value;
      const lib = scheme === 'HTTPS' ? https : http;
      return new Promise((resolve) => {
        const req = lib.request({ host: g.host || t.podIP, port, path: g.path || '/', method: 'GET', headers, timeout: timeoutMs, rejectUnauthorized: false }, (res) => {
          res.resume();
          const code = res.statusCode ?? 0;
          resolve(code >= 200 && code < 400 ? { ok: true, message: '' } : { ok: false, message: `HTTP probe failed with statuscode: ${code}` });
        });
        req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
        req.on('error', (err) => resolve({ ok: false, message: `Get "${scheme.toLowerCase()}://${g.host || t.podIP}:${port}${g.path || '/'}": ${err.message}` }));
        req.end();
      });
    }
    case 'tcpSocket': {
      let port: number;
      try {
        port = resolvePort(a.value.port, t.container);
      } catch (err) {
        return Promise.resolve({ ok: false, message: (err as Error).message });
      }
      return new Promise((resolve) => {
        const s = connect({ host: a.value.host || t.podIP, port, timeout: timeoutMs });
        s.on('connect', () => {
          s.destroy();
          resolve({ ok: true, message: '' });
        });
        s.on('timeout', () => {
          s.destroy();
          resolve({ ok: false, message: `dial tcp ${a.value.host || t.podIP}:${port}: i/o timeout` });
        });
        s.on('error', (err) => resolve({ ok: false, message: `dial tcp ${a.value.host || t.podIP}:${port}: ${err.message}` }));
      });
    }
    case 'grpc':
      return grpcHealthCheck(t.podIP, a.value.port, a.value.service, timeoutMs);
    case 'sleep':
      // The kubelet's sleep hook: waits in the agent, cut short where the hook's time is up
      // (for preStop, the grace period).
      return new Promise((resolve) => {
        const ms = Number(a.value.seconds) * 1000;
        setTimeout(() => resolve({ ok: true, message: '' }), Math.min(ms, timeoutMs)).unref();
      });
  }
}

export type ProbeKind = 'startup' | 'liveness' | 'readiness';

/**
 * Runs one probe on its period and reports threshold crossings: `onChange(true)` after
 * successThreshold consecutive successes, `onChange(false)` after failureThreshold failures.
 */
export class Prober {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private successes = 0;
  private failures = 0;
  private state: boolean | undefined;
  /** Every single result, for metrics. */
  onEach: ((ok: boolean) => void) | undefined;
  readonly period: number;
  readonly timeout: number;
  readonly successThreshold: number;
  readonly failureThreshold: number;

  constructor(
    readonly kind: ProbeKind,
    private readonly probe: Probe,
    private readonly target: ProbeTarget,
    private readonly onChange: (ok: boolean, message: string) => void,
    /** Seconds are scaled by this for tests; 1 in production. */
    private readonly secondMs = 1000,
  ) {
    this.period = (probe.periodSeconds ?? 10) * secondMs;
    this.timeout = (probe.timeoutSeconds ?? 1) * secondMs;
    this.successThreshold = kind === 'readiness' ? (probe.successThreshold ?? 1) : 1;
    this.failureThreshold = probe.failureThreshold ?? 3;
  }

  start(): void {
    this.schedule(this.probe.initialDelaySeconds * this.secondMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.stopped || !this.probe.handler) return;
    const r = await runHandler(this.probe.handler, this.target, this.timeout);
    if (this.stopped) return;
    this.onEach?.(r.ok);
    if (r.ok) {
      this.failures = 0;
      if (++this.successes >= this.successThreshold && this.state !== true) {
        this.state = true;
        this.onChange(true, '');
      }
    } else {
      this.successes = 0;
      if (++this.failures >= this.failureThreshold && this.state !== false) {
        this.state = false;
        this.onChange(false, r.message);
      } else if (this.failures >= this.failureThreshold && this.kind === 'liveness') {
        this.onChange(false, r.message);
      }
    }
    // A startup probe is done once it succeeded.
    if (this.kind === 'startup' && this.state === true) return;
    this.schedule(this.period);
  }
}
