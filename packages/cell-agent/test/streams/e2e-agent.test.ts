// End to end through the real agent (startAgent: the runtime's gRPC server, pods from a real
// registry under runc) with the stream services wired in: logs incl. --previous after a restart,
// exec with and without tty, port-forward into the pod's own network namespace, stats.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Metadata, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ListAuditRequest, type ListAuditResponse, LogsRequest, PortForwardFrame, StatsRequest, type LogChunk, type StatsResponse } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { apply, pod, startTestAgent, type TestAgent } from '../helpers/agent.js';
import { startTestRegistry, type TestImages } from '../helpers/registry.js';
import { requireTools } from '../helpers/rootfs.js';
import { collectExec, start, stdin } from './helpers/grpc.js';

let reg: TestImages;
let a: TestAgent;
const netns = `cello-e2e-streams-${process.pid}`;

beforeAll(async () => {
  requireTools();
  execFileSync('ip', ['netns', 'add', netns]);
  execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  reg = await startTestRegistry();
  a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host], podNetns: `/run/netns/${netns}`, podIP: '10.99.0.2' });
  await apply(a.client, {
    pod: pod('streams', {
      containers: [
        { name: 'web', image: reg.busybox, command: ['sh', '-c', 'echo web-started; echo web-err >&2; httpd -p 8080 -h /var/www; exec sleep 3600'] },
        { name: 'crasher', image: reg.busybox, command: ['sh', '-c', 'echo "run at $(date +%s)"; sleep 0.3; exit 1'] },
      ],
    }),
  });
  await a.watch.until('web running and crasher restarted', (w) => w.running('web') && (w.unit('crasher')?.restartCount ?? 0) >= 1, 60_000);
}, 120_000);

afterAll(async () => {
  await a?.stop();
  await reg?.stop();
  try {
    execFileSync('ip', ['netns', 'del', netns]);
  } catch {
    /* gone */
  }
});

function logs(req: Partial<LogsRequest>): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const lines: string[] = [];
    const call = a.client.logs(LogsRequest.fromPartial(req));
    call.on('data', (c: LogChunk) => lines.push(...c.entries.map((e) => e.line.toString())));
    call.on('end', () => resolve(lines));
    call.on('error', reject);
  });
}

describe('streams through the real agent', () => {
  it('Logs: both streams of a unit, and the previous instance of a restarted one', async () => {
    // stdout and stderr are separate pipes: their relative order is whatever the reads saw.
    expect((await logs({ container: 'web' })).sort()).toEqual(['web-err', 'web-started']);
    const prev = await logs({ container: 'crasher', previous: true });
    expect(prev).toHaveLength(1);
    expect(prev[0]).toMatch(/^run at \d+$/);
    await expect(logs({ container: 'nope' })).rejects.toMatchObject({ code: status.NOT_FOUND });
  });

  it('Exec: as the unit, with and without a tty; errors are clean', async () => {
    const call = a.client.exec(new Metadata());
    call.write(start({ container: 'web', command: ['sh', '-c', 'hostname; echo $PATH; exit 6'] }));
    const r = await collectExec(call);
    expect(r.stdout.toString()).toBe(`streams\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n`);
    expect(r.exit?.exitCode).toBe(6);
    const t = a.client.exec();
    t.write(start({ container: 'web', command: ['sh'], tty: true, stdin: true, size: { columns: 77, rows: 22 } }));
    t.write(stdin('stty size; exit\r'));
    const tr = await collectExec(t);
    expect(tr.stdout.toString()).toContain('22 77');
    expect(tr.exit?.exitCode).toBe(0);
    const bad = a.client.exec();
    bad.write(start({ container: 'web', command: ['/nonexistent'] }));
    expect((await collectExec(bad)).exit?.exitCode).toBe(127);
  });

  it('ListAudit: the agent keeps the exec sessions in its state dir', async () => {
    const res = await new Promise<ListAuditResponse>((resolve, reject) => a.client.listAudit(ListAuditRequest.fromPartial({}), (e, r) => (e ? reject(e) : resolve(r))));
    const rec = res.records.find((r) => r.command[2] === 'hostname; echo $PATH; exit 6');
    expect(rec).toMatchObject({ kind: 'exec', container: 'web', tty: false });
    expect(rec?.exit?.exitCode).toBe(6);
    expect(res.records.some((r) => r.tty && r.command[0] === 'sh')).toBe(true);
  });

  it("PortForward: reaches httpd in the pod's network namespace", async () => {
    const call = a.client.portForward();
    const chunks: Buffer[] = [];
    const done = new Promise<void>((resolve, reject) => {
      call.on('data', (f: PortForwardFrame) => f.frame?.$case === 'data' && chunks.push(f.frame.value));
      call.on('end', () => resolve());
      call.on('error', reject);
    });
    call.write(PortForwardFrame.fromPartial({ frame: { $case: 'start', value: { port: 8080 } } }));
    call.write(PortForwardFrame.fromPartial({ frame: { $case: 'data', value: Buffer.from('GET /index.html HTTP/1.0\r\n\r\n') } }));
    call.write(PortForwardFrame.fromPartial({ frame: { $case: 'closeWrite', value: true } }));
    await done;
    const text = Buffer.concat(chunks).toString();
    expect(text).toMatch(/^HTTP\/1\.[01] 200/);
    expect(text.endsWith('hello from busybox httpd\n')).toBe(true);
    expect(createHash('sha256').update(text).digest('hex')).toHaveLength(64);
  });

  it('Stats: every unit with its restarts, and the cell', async () => {
    const s = await waitFor(
      'web cgroup figures',
      () =>
        new Promise<StatsResponse | undefined>((resolve, reject) =>
          a.client.stats(StatsRequest.fromPartial({}), (e, r) => (e ? reject(e) : resolve(r.units.find((u) => u.name === 'web')!.memoryUsageBytes > 0 ? r : undefined))),
        ),
      { timeoutMs: 10_000 },
    );
    const web = s.units.find((u) => u.name === 'web')!;
    expect(web.pids).toBeGreaterThanOrEqual(2);
    expect(web.cpuUsageNanos).toBeGreaterThan(0);
    expect(s.units.find((u) => u.name === 'crasher')!.restarts).toBeGreaterThanOrEqual(1);
    expect(s.cell!.memoryTotalBytes).toBeGreaterThan(0);
  });
});
