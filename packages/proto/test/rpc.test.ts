// Every RPC shape of the contracts over a real grpc-js server on loopback: unary, server
// streams, bidi streams, status codes and metadata, and the standard health service.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type AgentInfo,
  ApplyPodRequest,
  CellAgentClient,
  CellAgentService,
  type CellAgentServer,
  type ExecInput,
  type ExecOutput,
  type GetStatusResponse,
  LogChunk,
  LogStream,
  LogsRequest,
  type PortForwardFrame,
  PodPhase,
  type WatchStatusEvent,
} from '../src/cell.js';
import { ControllerClient, ControllerService, type ControllerServer, EventType, type PodEvent, type VersionResponse } from '../src/controller.js';
import { HealthClient, HealthCheckResponse_ServingStatus as Serving } from '../src/health.js';
import { HealthService, podFromManifest } from '../src/index.js';

const unimplemented = (_call: unknown, cb?: (err: grpc.ServiceError) => void) => cb?.({ code: grpc.status.UNIMPLEMENTED, details: 'not in this test' } as grpc.ServiceError);

const POD = podFromManifest(`
apiVersion: v1
kind: Pod
metadata: { name: echo }
spec:
  containers: [{ name: main, image: busybox:1.36, command: [sh], resources: { limits: { memory: 64Mi } } }]
`).pod;

const agent: CellAgentServer = {
  applyPod(call, cb) {
    const md = call.metadata.get('x-request-id');
    if (!call.request.pod?.metadata?.name) {
      return cb({ code: grpc.status.INVALID_ARGUMENT, details: 'pod.metadata.name: is required' });
    }
    const trailer = new grpc.Metadata();
    trailer.set('x-request-id', String(md[0] ?? ''));
    cb(null, { generation: call.request.generation, changedUnits: call.request.pod.spec!.containers.map((c) => c.name) }, trailer);
  },
  getStatus(_call, cb) {
    cb(null, {
      status: {
        phase: PodPhase.POD_PHASE_RUNNING,
        podIp: '10.0.0.7',
        conditions: [],
        podIps: [],
        hostIp: '',
        message: '',
        reason: '',
        startTime: new Date(1_700_000_000_000),
        initContainerStatuses: [],
        containerStatuses: [],
        observedGeneration: 3,
        qosClass: 'Burstable',
        removedContainerStatuses: [],
        ephemeralContainerStatuses: [],
      },
      generation: 3,
      podUid: 'u1',
    });
  },
  watchStatus(call) {
    call.write({ kind: { $case: 'heartbeat', value: { time: new Date(1000), sequence: 1 } } });
    call.write({ kind: { $case: 'event', value: { time: new Date(2000), type: 'Normal', reason: 'Started', message: 'started main', container: 'main' } } });
    call.end();
  },
  logs(call) {
    const n = Number(call.request.tailLines ?? 0);
    for (let i = 0; i < n; i++) {
      call.write(
        LogChunk.fromPartial({
          entries: [{ stream: LogStream.LOG_STREAM_STDOUT, timeSeconds: 1_700_000_000, timeNanos: 123_456_789 + i, line: Buffer.from(`line ${i}`), partial: false }],
        }),
      );
    }
    call.end();
  },
  exec(call) {
    let started = false;
    call.on('data', (f: ExecInput) => {
      const frame = f.frame;
      if (!frame) return;
      if (!started) {
        if (frame.$case !== 'start') {
          call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: 'first frame must be start' });
          return;
        }
        started = true;
        call.write({
          frame: { $case: 'stdout', value: Buffer.from(`$ ${frame.value.command.join(' ')} tty=${frame.value.tty} ${frame.value.size?.columns}x${frame.value.size?.rows}\n`) },
        });
        return;
      }
      if (frame.$case === 'stdin') call.write({ frame: { $case: 'stdout', value: Buffer.from(frame.value.toString('utf8').toUpperCase()) } });
      if (frame.$case === 'resize') call.write({ frame: { $case: 'stderr', value: Buffer.from(`resize ${frame.value.columns}x${frame.value.rows}`) } });
      if (frame.$case === 'stdinEof') {
        call.write({ frame: { $case: 'exit', value: { exitCode: 3, signal: '', message: '' } } });
        call.end();
      }
    });
  },
  attach: unimplemented as CellAgentServer['attach'],
  portForward(call) {
    let bytes = 0;
    call.on('data', (f: PortForwardFrame) => {
      if (f.frame?.$case === 'data') {
        bytes += f.frame.value.length;
        call.write({ frame: { $case: 'data', value: f.frame.value } });
      }
      if (f.frame?.$case === 'closeWrite') {
        call.write({ frame: { $case: 'closeWrite', value: true } });
        call.end();
      }
    });
    call.on('end', () => expect(bytes).toBeGreaterThan(0));
  },
  deletePod: unimplemented as CellAgentServer['deletePod'],
  stats: unimplemented as CellAgentServer['stats'],
  listAudit: unimplemented as CellAgentServer['listAudit'],
  agentLogs: unimplemented as CellAgentServer['agentLogs'],
  pullImage: unimplemented as CellAgentServer['pullImage'],
  configureRegistries: unimplemented as CellAgentServer['configureRegistries'],
  syncServices: unimplemented as CellAgentServer['syncServices'],
  portForwardTicket: unimplemented as CellAgentServer['portForwardTicket'],
  getInfo(_call, cb) {
    cb(null, { version: '0.1.0', cellId: 'cell-1', hostname: 'h', kernel: 'k', arch: 'amd64', runtime: 'runc', cgroupMode: 'hybrid', startedAt: new Date(5000) });
  },
};

const controller: Partial<ControllerServer> = {
  watchPods(call) {
    call.write({
      type: EventType.EVENT_TYPE_ADDED,
      pod: {
        metadata: {
          name: 'a',
          namespace: 'default',
          uid: 'u',
          generation: 1,
          resourceVersion: '7',
          creationTimestamp: undefined,
          deletionTimestamp: undefined,
          labels: {},
          annotations: {},
        },
        spec: POD.spec,
        status: undefined,
        cellId: 'c',
        instanceType: 't3.micro',
        nodeName: '',
        progress: undefined,
      },
    });
    call.end();
  },
  version(_call, cb) {
    cb(null, { version: '0.1.0', controllerId: 'ctl', store: 'embedded', provider: 'local', apiVersions: ['cello.controller.v1'] });
  },
};

let server: grpc.Server;
let addr: string;
const health = new HealthService();

beforeAll(async () => {
  server = new grpc.Server();
  server.addService(CellAgentService, agent);
  server.addService(ControllerService, controller as ControllerServer);
  server.addService(health.definition, health.implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  addr = `127.0.0.1:${port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
});

const creds = () => grpc.credentials.createInsecure();

describe('cello.cell.v1.CellAgent over grpc-js', () => {
  it('unary: ApplyPod carries the full pod, metadata and trailers', async () => {
    const client = new CellAgentClient(addr, creds());
    const md = new grpc.Metadata();
    md.set('x-request-id', 'r-42');
    const trailers = new Promise<grpc.Metadata>((resolve) => {
      const call = client.applyPod(ApplyPodRequest.fromPartial({ pod: POD, generation: 7, secrets: { s: { data: { k: Buffer.from([0, 1, 255]) } } } }), md, (err, res) => {
        expect(err).toBeNull();
        expect(res).toEqual({ generation: 7, changedUnits: ['main'] });
      });
      call.on('status', (s) => resolve(s.metadata));
    });
    expect((await trailers).get('x-request-id')).toEqual(['r-42']);
    client.close();
  });

  it('unary: an error status reaches the client with its code and message', async () => {
    const client = new CellAgentClient(addr, creds());
    const err = await new Promise<grpc.ServiceError>((resolve) =>
      client.applyPod({ pod: undefined, generation: 1, secrets: {}, configMaps: {}, serviceAccountTokens: [], registryCredentials: [], clusterDns: undefined }, (e) => resolve(e!)),
    );
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toBe('pod.metadata.name: is required');
    client.close();
  });

  it('unary: timestamps and enums survive the round trip', async () => {
    const client = new CellAgentClient(addr, creds());
    const res = await new Promise<GetStatusResponse>((resolve, reject) => client.getStatus({}, (e, r) => (e ? reject(e) : resolve(r))));
    expect(res.status?.phase).toBe(PodPhase.POD_PHASE_RUNNING);
    expect(res.status?.startTime).toEqual(new Date(1_700_000_000_000));
    const info = await new Promise<AgentInfo>((resolve, reject) => client.getInfo({}, (e, r) => (e ? reject(e) : resolve(r))));
    expect(info.startedAt).toEqual(new Date(5000));
    client.close();
  });

  it('server stream: WatchStatus and Logs deliver every message in order', async () => {
    const client = new CellAgentClient(addr, creds());
    const events: WatchStatusEvent[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = client.watchStatus({});
      s.on('data', (e: WatchStatusEvent) => events.push(e));
      s.on('end', resolve);
      s.on('error', reject);
    });
    expect(events.map((e) => e.kind?.$case)).toEqual(['heartbeat', 'event']);

    const lines: string[] = [];
    const nanos: number[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = client.logs(LogsRequest.fromPartial({ container: 'main', tailLines: 50, timestamps: true }));
      s.on('data', (c) => {
        for (const e of c.entries) {
          lines.push(Buffer.from(e.line).toString());
          nanos.push(e.timeNanos);
        }
      });
      s.on('end', resolve);
      s.on('error', reject);
    });
    expect(lines).toHaveLength(50);
    expect(lines[49]).toBe('line 49');
    expect(nanos[0]).toBe(123_456_789); // nanosecond precision kept
    client.close();
  });

  it('bidi: Exec interleaves stdin, resize, output and exactly one exit', async () => {
    const client = new CellAgentClient(addr, creds());
    const out: ExecOutput[] = [];
    const done = new Promise<void>((resolve, reject) => {
      const call = client.exec();
      call.on('data', (o: ExecOutput) => {
        out.push(o);
        if (out.length === 1) {
          call.write({ frame: { $case: 'stdin', value: Buffer.from('hello') } });
          call.write({ frame: { $case: 'resize', value: { columns: 120, rows: 40 } } });
          call.write({ frame: { $case: 'stdinEof', value: true } });
        }
      });
      call.on('end', resolve);
      call.on('error', reject);
      call.write({ frame: { $case: 'start', value: { container: 'main', command: ['sh', '-i'], tty: true, stdin: true, size: { columns: 80, rows: 24 }, requestedBy: '' } } });
    });
    await done;
    const text = out.map((o) =>
      o.frame?.$case === 'stdout' || o.frame?.$case === 'stderr' ? o.frame.value.toString() : `exit ${o.frame?.$case === 'exit' ? o.frame.value.exitCode : '?'}`,
    );
    expect(text).toEqual(['$ sh -i tty=true 80x24\n', 'HELLO', 'resize 120x40', 'exit 3']);
    client.close();
  });

  it('bidi: a protocol violation ends the stream with INVALID_ARGUMENT', async () => {
    const client = new CellAgentClient(addr, creds());
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const call = client.exec();
      call.on('data', () => undefined);
      call.on('error', resolve);
      call.write({ frame: { $case: 'stdin', value: Buffer.from('x') } });
    });
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    client.close();
  });

  it('bidi: PortForward relays a large payload byte for byte and half-closes', async () => {
    const client = new CellAgentClient(addr, creds());
    const payload = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    const got: Buffer[] = [];
    let closed = false;
    await new Promise<void>((resolve, reject) => {
      const call = client.portForward();
      call.on('data', (f: PortForwardFrame) => {
        if (f.frame?.$case === 'data') got.push(f.frame.value);
        if (f.frame?.$case === 'closeWrite') closed = true;
      });
      call.on('end', resolve);
      call.on('error', reject);
      call.write({ frame: { $case: 'start', value: { port: 8080, requestedBy: '' } } });
      for (let off = 0; off < payload.length; off += 64 * 1024) call.write({ frame: { $case: 'data', value: payload.subarray(off, off + 64 * 1024) } });
      call.write({ frame: { $case: 'closeWrite', value: true } });
    });
    expect(closed).toBe(true);
    expect(Buffer.concat(got).equals(payload)).toBe(true);
    client.close();
  });

  it('an RPC the server does not implement answers UNIMPLEMENTED', async () => {
    const client = new CellAgentClient(addr, creds());
    const err = await new Promise<grpc.ServiceError>((resolve) => client.stats({}, (e) => resolve(e!)));
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    client.close();
  });

  it('deadlines are enforced', async () => {
    const client = new CellAgentClient(addr, creds());
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const s = client.watchStatus({}, { deadline: Date.now() - 1 });
      s.on('data', () => undefined);
      s.on('error', resolve);
    });
    expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    client.close();
  });
});

describe('cello.controller.v1.Controller over grpc-js', () => {
  it('server stream and unary', async () => {
    const client = new ControllerClient(addr, creds());
    const events: PodEvent[] = [];
    await new Promise<void>((resolve, reject) => {
      const s = client.watchPods({ namespace: '', labelSelector: '' });
      s.on('data', (e) => events.push(e));
      s.on('end', resolve);
      s.on('error', reject);
    });
    expect(events).toHaveLength(1);
    expect(events[0].type).toBe(EventType.EVENT_TYPE_ADDED);
    expect(events[0].pod?.spec?.containers[0].resources?.limits?.memoryBytes).toBe(64 * 2 ** 20);
    const v = await new Promise<VersionResponse>((resolve, reject) => client.version({}, (e, r) => (e ? reject(e) : resolve(r))));
    expect(v.apiVersions).toEqual(['cello.controller.v1']);
    client.close();
  });
});

describe('grpc.health.v1', () => {
  it('check and watch follow status changes', async () => {
    const client = new HealthClient(addr, creds());
    const check = (service: string) => new Promise<Serving | grpc.status>((resolve) => client.check({ service }, (e, r) => resolve(e ? e.code : r!.status)));
    expect(await check('')).toBe(Serving.SERVING);
    expect(await check('nope')).toBe(grpc.status.NOT_FOUND);

    const seen: Serving[] = [];
    const call = client.watch({ service: '' });
    const twoUpdates = new Promise<void>((resolve) =>
      call.on('data', (r) => {
        seen.push(r.status);
        if (seen.length === 1) health.setStatus('', Serving.NOT_SERVING);
        if (seen.length === 2) resolve();
      }),
    );
    call.on('error', () => undefined);
    await twoUpdates;
    call.cancel();
    expect(seen).toEqual([Serving.SERVING, Serving.NOT_SERVING]);
    expect(await check('')).toBe(Serving.NOT_SERVING);
    health.setStatus('', Serving.SERVING);
    client.close();
  });
});
