// The kubelet API's exec relay does not buffer for a client that does not read: a real
// controller with the local provider (real cell agent, runc) runs a pod, `cat /dev/zero` is
// exec'd through the virtual node's SPDY streaming path (the same SpdyStreams the kubelet API
// hands its upgrades to), and the SPDY client stops reading. The bytes the relay holds for it
// stay under the session's high-water mark plus a message in flight, while the command would
// produce hundreds of MiB in the same time; once the client reads again, the flood resumes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { createDeflate, constants as Z } from 'node:zlib';
import { PodPhase } from '@cello/proto/cell';
import { waitFor } from '@cello/testkit';
import { Cluster, startFixtureRegistry, type Registry } from '../helpers/cluster.js';
import { Controller } from '../../src/k8s/controller-client.js';
import { SpdyStreams } from '../../src/k8s/kubelet/streams.js';
import { FrameReader, FrameType, controlFrame, encodeHeaderBlock, type Frame } from '../../src/k8s/kubelet/spdy/index.js';
import { SPDY3_DICTIONARY } from '../../src/k8s/kubelet/spdy/dictionary.js';
import { createLogger } from '../../src/obs/logger.js';

const HIGH_WATER = 1024 * 1024;

let registry: Registry;
let cl: Cluster;
let controller: Controller;
let streams: SpdyStreams;
let server: Server;
let port = 0;

beforeAll(async () => {
  registry = await startFixtureRegistry();
  cl = new Cluster({ registry, warm: 0, healthSeconds: 5 });
  await cl.start();
  const applied = await cl.cellctl([
    'apply',
    '-f',
    cl.manifest(
      'flood',
      `apiVersion: v1
kind: Pod
metadata: { name: flood }
spec:
  containers: [{ name: main, image: ${registry.image}, command: ["sleep", "3600"] }]
`,
    ),
  ]);
  expect(applied.code, applied.stderr).toBe(0);
  await cl.waitPod('flood', 'Running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
  controller = new Controller(cl.server, cl.apiCredentials());
  streams = new SpdyStreams({ controller, log: createLogger({ level: 'silent' }) });
  server = createServer();
  server.on('upgrade', (req, socket, head) => streams.handle(req, socket as Socket, head, 'backpressure-test'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as { port: number }).port;
}, 180_000);

afterAll(async () => {
  streams?.close();
  controller?.close();
  if (server) await new Promise((r) => server.close(r));
  await cl?.stop();
  await registry?.server.stop();
}, 60_000);

/** Upgrades to SPDY/3.1 and opens the exec's streams, as the API server does. */
async function openExec(path: string, types: string[]): Promise<{ sock: Socket; frames: Frame[]; stdoutBytes: () => number }> {
  const sock = connect(port, '127.0.0.1');
  await new Promise((r, j) => sock.once('connect', r).once('error', j));
  sock.write(`POST ${path} HTTP/1.1\r\nHost: kubelet\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n`);
  let head = Buffer.alloc(0);
  const reader = new FrameReader();
  const frames: Frame[] = [];
  let stdout = 0;
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no 101 within 10 s: ${head.toString()}`)), 10_000);
    const onData = (b: Buffer) => {
      head = Buffer.concat([head, b]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(t);
      sock.off('data', onData);
      if (!head.subarray(0, end).toString().startsWith('HTTP/1.1 101')) return reject(new Error(head.toString()));
      const rest = head.subarray(end + 4);
      sock.on('data', (c: Buffer) => {
        for (const f of reader.push(c)) {
          if (f.kind === 'data' && f.streamId === 3) stdout += f.data.length;
          else if (f.kind === 'control') frames.push(f);
        }
      });
      if (rest.length) sock.emit('data', rest);
      resolve();
    };
    sock.on('data', onData);
  });
  const deflate = createDeflate({ dictionary: SPDY3_DICTIONARY });
  for (const [i, type] of types.entries()) {
    const block = await new Promise<Buffer>((resolve) => {
      const out: Buffer[] = [];
      const onData = (c: Buffer) => out.push(c);
      deflate.on('data', onData);
      deflate.write(encodeHeaderBlock({ streamtype: [type] }));
      deflate.flush(Z.Z_SYNC_FLUSH, () => {
        deflate.off('data', onData);
        resolve(Buffer.concat(out));
      });
    });
    const p = Buffer.alloc(10);
    p.writeUInt32BE(1 + 2 * i, 0);
    sock.write(controlFrame(FrameType.SYN_STREAM, 0, Buffer.concat([p, block])));
  }
  return { sock, frames, stdoutBytes: () => stdout };
}

describe('kubelet API streaming relays: backpressure', () => {
  it('exec of a command flooding stdout to a client that does not read: the relay holds at most the high-water mark, and the flood resumes when the client reads', async () => {
    const q = new URLSearchParams([
      ['command', 'cat'],
      ['command', '/dev/zero'],
      ['output', '1'],
    ]);
    const c = await openExec(`/exec/default/flood/main?${q}`, ['error', 'stdout']);
    try {
      await waitFor('stdout to flow', () => c.stdoutBytes() > 0, { timeoutMs: 20_000, intervalMs: 50 });
      c.sock.pause(); // the client stops reading
      let peak = 0;
      const until = Date.now() + 4000;
      while (Date.now() < until) {
        peak = Math.max(peak, streams.stats().bufferedBytes);
        await new Promise((r) => setTimeout(r, 50));
      }
      // A gRPC message (the agent's read of at most 64 KiB) and a frame may land past the mark.
      expect(peak).toBeLessThan(HIGH_WATER + 256 * 1024);
      // It was backpressure, not a slow producer: reading again, the flood goes on at speed.
      const before = c.stdoutBytes();
      c.sock.resume();
      await waitFor('32 MiB more of stdout once the client reads', () => c.stdoutBytes() - before > 32 * 2 ** 20, { timeoutMs: 20_000, intervalMs: 50 });
    } finally {
      c.sock.destroy();
    }
  }, 60_000);
});
