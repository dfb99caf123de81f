// Port-forward into the pod's network namespace, and stats that move, through the gRPC API
// against real runc containers.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LogsRequest, PortForwardFrame, StatsRequest, type StatsResponse } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { CgroupStatsReader } from '../../src/stats/index.js';
import { AgentMetrics, startMetricsServer } from '../../src/metrics/index.js';
import { RuncTestUnits } from './helpers/runc-units.js';
import { startStreamServer, type TestServer } from './helpers/grpc.js';

const units = new RuncTestUnits();
const big = randomBytes(32 * 1024 * 1024);
const bigHash = createHash('sha256').update(big).digest('hex');
let srv: TestServer;

beforeAll(async () => {
  units.add({
    name: 'web',
    args: ['sh', '-c', 'httpd -p 8080 -h /www && exec nc -ll -p 9000 -e sha256sum'],
    files: { '/www/big.bin': big, '/www/hello.txt': 'hello from the pod\n' },
  });
  units.add({ name: 'burn', args: ['sh', '-c', 'dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; while :; do :; done'], memoryLimitBytes: 512 * 1024 * 1024 });
  await Promise.all(units.list().map((u) => u.start()));
  srv = await startStreamServer({ units, logsFor: (n) => units.get(n)?.logs });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  await units.cleanup();
});

interface Forwarded {
  data: Buffer;
  closedByPod: boolean;
  error: ServiceError | undefined;
}

/** One port-forward stream: sends `payload`, optionally half-closes, collects the answer. */
function forward(port: number, payload: Buffer, halfClose = true, timeoutMs = 30_000): Promise<Forwarded> {
  const call = srv.client.portForward();
  const chunks: Buffer[] = [];
  let closedByPod = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      call.cancel();
      reject(new Error(`port-forward to ${port} did not finish in ${timeoutMs} ms`));
    }, timeoutMs);
    call.on('data', (f: PortForwardFrame) => {
      if (f.frame?.$case === 'data') chunks.push(f.frame.value);
      if (f.frame?.$case === 'closeWrite') closedByPod = true;
    });
    const done = (error?: ServiceError) => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), closedByPod, error });
    };
    call.on('error', (e: ServiceError) => done(e));
    call.on('end', () => done());
    call.write(PortForwardFrame.fromPartial({ frame: { $case: 'start', value: { port } } }));
    for (let off = 0; off < payload.length; off += 256 * 1024) {
      call.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value: payload.subarray(off, off + 256 * 1024) } }));
    }
    if (halfClose) call.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }));
  });
}

function body(http: Buffer): Buffer {
  const i = http.indexOf('\r\n\r\n');
  return http.subarray(i + 4);
}

describe('PortForward', () => {
  it("reaches a server listening only on the pod's loopback (not the agent's)", async () => {
    const r = await forward(8080, Buffer.from('GET /hello.txt HTTP/1.0\r\n\r\n'));
    expect(r.error).toBeUndefined();
    expect(r.data.toString()).toMatch(/^HTTP\/1\.[01] 200/);
    expect(body(r.data).toString()).toBe('hello from the pod\n');
    expect(r.closedByPod).toBe(true);
    // 8080 is not open in the agent's own namespace.
    await expect(new Promise((resolve, reject) => request('http://127.0.0.1:8080/hello.txt', resolve).on('error', reject).end())).rejects.toThrow(/ECONNREFUSED/);
  });

  it('serves concurrent connections and a large transfer intact (sha256)', async () => {
    const get = () => forward(8080, Buffer.from('GET /big.bin HTTP/1.0\r\n\r\n'), true, 60_000);
    const results = await Promise.all([get(), get(), get(), forward(8080, Buffer.from('GET /hello.txt HTTP/1.0\r\n\r\n'))]);
    for (const r of results.slice(0, 3)) {
      expect(r.error).toBeUndefined();
      expect(createHash('sha256').update(body(r.data)).digest('hex')).toBe(bigHash);
    }
    expect(body(results[3]!.data).toString()).toBe('hello from the pod\n');
  }, 90_000);

  it('half-closes: the pod reads our EOF and still answers (upload of 32 MB hashed in the pod)', async () => {
    const r = await forward(9000, big, true, 60_000);
    expect(r.error).toBeUndefined();
    expect(r.data.toString().split(/\s+/)[0]).toBe(bigHash);
    expect(r.closedByPod).toBe(true);
  }, 90_000);

  it('a port nothing listens on is a clean error; a bad port is refused by name', async () => {
    const r = await forward(9999, Buffer.alloc(0));
    expect(r.error?.code).toBe(status.UNAVAILABLE);
    expect(r.error?.details).toMatch(/port 9999.*ECONNREFUSED/);
    const bad = await forward(70000, Buffer.alloc(0));
    expect(bad.error?.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.error?.details).toMatch(/start\.port/);
    expect(units.get('web')!.running()).toBe(true);
  });
});

function stats(): Promise<StatsResponse> {
  return new Promise((resolve, reject) => srv.client.stats(StatsRequest.fromPartial({}), (e, r) => (e ? reject(e) : resolve(r))));
}

describe('Stats (cgroup v1 on this host, /proc)', () => {
  it('moves when a unit burns CPU and allocates memory', async () => {
    const s1 = await waitFor(
      'burn unit to have filled 48 MB',
      async () => {
        const s = await stats();
        const b = s.units.find((u) => u.name === 'burn')!;
        return b.memoryUsageBytes > 48 * 1024 * 1024 ? s : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    );
    const b1 = s1.units.find((u) => u.name === 'burn')!;
    const w1 = s1.units.find((u) => u.name === 'web')!;
    expect(b1.memoryWorkingSetBytes).toBeGreaterThan(48 * 1024 * 1024); // tmpfs pages are not inactive file cache
    expect(b1.memoryLimitBytes).toBe(512 * 1024 * 1024);
    expect(b1.pids).toBeGreaterThanOrEqual(1);
    expect(b1.restarts).toBe(0);
    expect(b1.startTime).toBeInstanceOf(Date);
    await new Promise((r) => setTimeout(r, 500));
    const s2 = await stats();
    const b2 = s2.units.find((u) => u.name === 'burn')!;
    const w2 = s2.units.find((u) => u.name === 'web')!;
    // The machine is shared (2 cores, often heavily loaded), so the burner's share varies; it
    // must still clearly burn, and the idle unit must not.
    expect(b2.cpuUsageNanos - b1.cpuUsageNanos).toBeGreaterThan(20_000_000);
    expect(b2.cpuCores).toBeGreaterThan(0.03);
    expect(w2.cpuCores).toBeLessThan(b2.cpuCores / 5);
    expect(w2.pids).toBeGreaterThanOrEqual(2); // httpd and nc
    expect(w1.memoryLimitBytes).toBe(0);
    const cell = s2.cell!;
    expect(cell.cpuCount).toBeGreaterThanOrEqual(1);
    expect(cell.cpuCores).toBeGreaterThan(b2.cpuCores * 0.5);
    expect(cell.memoryTotalBytes).toBeGreaterThan(cell.memoryAvailableBytes);
    expect(cell.filesystems.find((f) => f.path === '/')?.capacityBytes).toBeGreaterThan(0);
    expect(cell.interfaces.some((i) => i.name === 'lo')).toBe(true);
  });

  it("serves the same figures and the agent's own on a Prometheus /metrics port", async () => {
    const metrics = new AgentMetrics();
    // A second server over the same units, instrumented: its calls are counted by method and code.
    const inst = await startStreamServer({ units, logsFor: (n) => units.get(n)?.logs, metrics }, { instrument: metrics });
    metrics.setStatsSource(() => inst.handlers.statsCollector.collect());
    await new Promise((resolve, reject) => inst.client.stats(StatsRequest.fromPartial({}), (e, r) => (e ? reject(e) : resolve(r))));
    const missing = inst.client.logs(LogsRequest.fromPartial({ container: 'nope' }));
    await new Promise((resolve) => missing.on('error', resolve));
    const pf = inst.client.portForward();
    pf.on('error', () => {});
    pf.write(PortForwardFrame.fromPartial({ frame: { $case: 'start', value: { port: 8080 } } }));
    pf.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value: Buffer.from('GET /hello.txt HTTP/1.0\r\n\r\n') } }));
    pf.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }));
    await new Promise((resolve) => pf.on('end', resolve).resume());
    await inst.stop();
    metrics.recordPull({ ok: true, bytes: 1234, seconds: 0.5 });
    metrics.recordProbe('web', 'readiness', 'success');
    const m = await startMetricsServer(metrics, { host: '127.0.0.1', port: 0 });
    try {
      const text = await (await fetch(`http://127.0.0.1:${m.port}/metrics`)).text();
      const cores = Number(/cello_unit_cpu_cores\{unit="burn"\} (\S+)/.exec(text)?.[1]);
      expect(cores).toBeGreaterThan(0.01);
      expect(text).toMatch(/cello_unit_memory_working_set_bytes\{unit="burn"\} \d{8,9}/);
      expect(text).toContain('cello_agent_grpc_calls_total{method="/cello.cell.v1.CellAgent/Stats",code="OK"} 1');
      expect(text).toContain('cello_agent_grpc_calls_total{method="/cello.cell.v1.CellAgent/Logs",code="NOT_FOUND"} 1');
      expect(text).toContain('cello_agent_grpc_calls_total{method="/cello.cell.v1.CellAgent/PortForward",code="OK"} 1');
      expect(text).toMatch(/cello_agent_stream_bytes_total\{kind="port_forward",direction="out"\} \d+/);
      expect(text).toContain('cello_agent_image_pull_bytes_total 1234');
      expect(text).toContain('cello_agent_probe_results_total{unit="web",probe="readiness",result="success"} 1');
      expect(text).toMatch(/cello_cell_memory_total_bytes \d+/);
      expect((await fetch(`http://127.0.0.1:${m.port}/other`)).status).toBe(404);
    } finally {
      await m.close();
    }
  });
});

describe('cgroup v2 reader (against a fake cgroupfs tree this test writes)', () => {
  it('reads cpu.stat, memory.current/stat/max and pids.current; "max" is unlimited', async () => {
    const root = mkdtempSync(join(tmpdir(), 'cello-fake-cgroup2-'));
    try {
      const dir = join(root, 'cello', 'pod', 'web');
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(root, 'cgroup.controllers'), 'cpu memory pids\n');
      writeFileSync(join(dir, 'cpu.stat'), 'usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n');
      writeFileSync(join(dir, 'memory.current'), '104857600\n');
      writeFileSync(join(dir, 'memory.stat'), 'anon 52428800\nfile 41943040\ninactive_file 20971520\nactive_file 20971520\n');
      writeFileSync(join(dir, 'memory.max'), '268435456\n');
      writeFileSync(join(dir, 'pids.current'), '7\n');
      const reader = new CgroupStatsReader({ v2: root });
      expect(await reader.read('/cello/pod/web')).toEqual({
        cpuUsageNanos: 2_500_000_000,
        memoryUsageBytes: 104_857_600,
        memoryWorkingSetBytes: 104_857_600 - 20_971_520,
        memoryRssBytes: 52_428_800,
        memoryLimitBytes: 268_435_456,
        pids: 7,
      });
      writeFileSync(join(dir, 'memory.max'), 'max\n');
      expect((await reader.read('/cello/pod/web'))?.memoryLimitBytes).toBe(0);
      expect(await reader.read('/cello/pod/missing')).toBeUndefined();
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
