// The probe manager's order, against a TCP target on this host: liveness and readiness start
// only once the startup probe has passed; without a readiness probe the unit is told so; every
// result is reported; after stop() no probe runs.
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Container, type Probe } from '@cello/proto/cell';
import { ProbeManager, type ProbeHooks } from '../src/pod/probe-manager.js';
import type { ProbeTarget } from '../src/pod/probes.js';

let server: Server;
let port = 0;
beforeAll(async () => {
  server = createServer((s) => s.end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const tcp = (p: () => number, extra: Partial<Probe> = {}): Probe =>
  ({
    handler: { action: { $case: 'tcpSocket', value: { port: { value: { $case: 'number', value: p() } }, host: '127.0.0.1' } } },
    periodSeconds: 1,
    timeoutSeconds: 10,
    failureThreshold: 1,
    initialDelaySeconds: 0,
    ...extra,
  }) as Probe;

function record(): { log: string[]; hooks: ProbeHooks } {
  const log: string[] = [];
  return {
    log,
    hooks: {
      startup: (ok) => log.push(`startup:${ok}`),
      liveness: (ok) => log.push(`liveness:${ok}`),
      readiness: (ok) => log.push(`readiness:${ok}`),
      noReadinessProbe: () => log.push('noReadinessProbe'),
      each: (kind, ok) => log.push(`each:${kind}:${ok}`),
    },
  };
}

const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
};

describe('ProbeManager', () => {
  it('starts liveness and readiness only after the startup probe passed', async () => {
    const spec = Container.fromPartial({ name: 'c', startupProbe: tcp(() => port), livenessProbe: tcp(() => port), readinessProbe: tcp(() => port) });
    const target: ProbeTarget = { runcBinary: 'runc', runcRoot: '/nonexistent', containerId: 'x', podIP: '127.0.0.1', container: spec };
    const { log, hooks } = record();
    const m = new ProbeManager(spec, 10);
    m.start(target, hooks);
    await until(() => log.includes('liveness:true') && log.includes('readiness:true'));
    m.stop();
    expect(log.slice(0, 2)).toEqual(['each:startup:true', 'startup:true']);
    expect(log).not.toContain('noReadinessProbe');
    const n = log.length;
    await new Promise((r) => setTimeout(r, 50));
    expect(log.length).toBe(n);
  });

  it('without a startup or readiness probe: liveness starts at once and the unit hears there is no readiness probe', async () => {
    const spec = Container.fromPartial({ name: 'c', livenessProbe: tcp(() => port) });
    const target: ProbeTarget = { runcBinary: 'runc', runcRoot: '/nonexistent', containerId: 'x', podIP: '127.0.0.1', container: spec };
    const { log, hooks } = record();
    const m = new ProbeManager(spec, 10);
    m.start(target, hooks);
    expect(log).toEqual(['noReadinessProbe']);
    await until(() => log.includes('liveness:true'));
    m.stop();
  });

  it('a failing startup probe keeps liveness and readiness from starting', async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const dead = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const spec = Container.fromPartial({ name: 'c', startupProbe: tcp(() => dead), readinessProbe: tcp(() => port) });
    const target: ProbeTarget = { runcBinary: 'runc', runcRoot: '/nonexistent', containerId: 'x', podIP: '127.0.0.1', container: spec };
    const { log, hooks } = record();
    const m = new ProbeManager(spec, 10);
    m.start(target, hooks);
    await until(() => log.includes('startup:false'));
    m.stop();
    expect(log.filter((l) => !l.startsWith('each:startup') && l !== 'startup:false')).toEqual([]);
  });
});
