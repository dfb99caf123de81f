// Streaming through the shim with the real clients: crictl v1.34.0's exec (with and without -i
// and -t), attach and port-forward connect to the URLs the shim's Exec/Attach/PortForward return,
// over SPDY and over WebSocket (crictl's --transport), and reach a real cell (the controller
// daemon, local provider, real cell agents and runc) through the controller's streams, as
// `kubectl exec` reaches them through a kubelet. The URL is the credential: a used one is refused.
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { WebSocket } from 'ws';
import { criTools, freePort, makeTestPki, pushBusybox, pushPause, startRegistry, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ExecResponse, PortForwardResponse } from '../src/gen/runtime/v1/api.js';
import { call, clients, crictlFor, deadline, startShim, type Run, type Shim } from './shim.js';
import { startController, type TestController } from './controller.js';

let tools: { crictl: string; critest: string };
let registry: RegistryServer;
let controller: TestController;
let shim: Shim;
let shimArgs: string[];
/** Directories of shims stopped with their state kept (their pod's log files go on being written). */
const leftovers: string[] = [];
let sandbox: string;
/** Serves /www/index.html on port 8080 of the cell. */
let web: string;
/** Reads lines on its stdin and answers each. */
let talk: string;

const {
  run: crictl,
  ok,
  file,
} = crictlFor(
  () => tools.crictl,
  () => shim,
);

const podConfig = {
  metadata: { name: 'stream', namespace: 'default', uid: 'uid-stream', attempt: 0 },
  hostname: 'stream',
  log_directory: '',
  linux: {},
};

/** crictl as a child process the test talks to: stdin to write, output collected. */
function spawnCrictl(args: string[]): { child: ChildProcess; out: () => string; err: () => string; done: Promise<Run> } {
  const cfg = file('crictl-spawn.yaml', {});
  // A JSON file is valid YAML: crictl reads its endpoints from it.
  const child = spawn(tools.crictl, ['--config', cfg, '--runtime-endpoint', `unix://${shim.socket}`, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<Run>((resolve) => child.on('exit', (code) => resolve({ code: code ?? 1, stdout: out, stderr: err })));
  return { child, out: () => out, err: () => err, done };
}

/** crictl under a pseudo-terminal (util-linux `script`) of 41 rows and 123 columns, for -t: what a user's terminal gives it. */
function crictlInTerminal(args: string[], input: string): Promise<Run> {
  const cfg = file('crictl-tty.yaml', {});
  const quoted = [tools.crictl, '--config', cfg, '--runtime-endpoint', `unix://${shim.socket}`, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const child = spawn('script', ['-qfec', `stty rows 41 cols 123 && exec ${quoted}`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stdin.write(input);
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code: code ?? 1, stdout: out, stderr: '' });
    }),
  );
}

beforeAll(async () => {
  tools = criTools();
  registry = await startRegistry();
  const busybox = await pushBusybox(registry, 'busybox:1');
  const pause = await pushPause(registry);
  controller = await startController({ insecureRegistries: [registry.host] });
  shimArgs = ['--insecure-registry', registry.host, '--controller-config', controller.cellctlConfig, '--sandbox-image', pause];
  shim = await startShim(shimArgs);
  podConfig.log_directory = join(shim.dir, 'pods', 'default_stream');
  sandbox = await ok(['--timeout', '120s', 'runp', file('pod.json', podConfig)]);
  const container = async (name: string, command: string[], extra: Record<string, unknown> = {}) => {
    const id = await ok([
      '--timeout',
      '60s',
      'create',
      sandbox,
      file(`${name}.json`, { metadata: { name, attempt: 0 }, log_path: `${name}/0.log`, image: { image: busybox }, command, linux: {}, ...extra }),
      file('pod.json', podConfig),
    ]);
    await ok(['--timeout', '60s', 'start', id]);
    return id;
  };
  web = await container('web', ['sh', '-c', 'mkdir -p /www && echo hello-from-the-cell > /www/index.html && exec httpd -f -p 8080 -h /www']);
  talk = await container('talk', ['sh', '-c', 'while read l; do echo got:$l; done; echo stdin-closed; exec sleep 3600'], { stdin: true });
}, 30 * 60_000);

afterAll(async () => {
  if (shim && sandbox) await crictl(['--timeout', '120s', 'rmp', '-f', sandbox]);
  await shim?.stop();
  for (const d of leftovers) rmSync(d, { recursive: true, force: true });
  await controller?.stop();
  await registry?.stop();
}, 180_000);

describe('crictl exec (the streaming Exec, not ExecSync)', () => {
  for (const transport of ['spdy', 'websocket']) {
    it(`over ${transport}: stdout, stderr and the real exit code; -i relays stdin to its end`, async () => {
      const t = ['--transport', transport];
      expect(await ok(['exec', ...t, web, 'sh', '-c', 'echo out-$((6*7))'])).toBe('out-42');
      const failed = await crictl(['exec', ...t, web, 'sh', '-c', 'echo to-stdout; echo to-stderr >&2; exit 5']);
      expect(failed.stdout.trim()).toBe('to-stdout');
      expect(failed.stderr).toContain('to-stderr');
      // crictl reports a streamed command's exit code in its error (it exits 1); the code is the command's own.
      expect(failed.code).toBe(1);
      expect(failed.stderr).toContain('command terminated with exit code 5');
      const cat = spawnCrictl(['exec', ...t, '-i', web, 'sh', '-c', 'cat; echo " (stdin ended)"']);
      cat.child.stdin!.end('piped through the cell');
      const r = await cat.done;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('piped through the cell (stdin ended)\n');
    }, 120_000);

    it(`over ${transport}: -it gets a terminal in the container, with the client's size`, async () => {
      // The terminal has a size from its first instant (the agent's default, 24x80: never 0x0,
      // whatever the order of typed input and resize); the client's own size comes on the resize
      // stream just after the process starts (as with the kubelet's own streaming server), so
      // the command looks until it is there.
      const size =
        'first=$(stty size 2>&1); for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25; do s=$(stty size 2>&1); [ "$s" = "41 123" ] && break; sleep 0.2; done; echo "first:$first size:$s"';
      const r = await crictlInTerminal(['exec', '--transport', transport, '-it', web, 'sh', '-c', `tty; ${size}; read l; echo "read:$l"`], 'typed\r');
      expect(r.stdout, r.stdout).toMatch(/\/dev\/pts\/\d+/);
      expect(r.stdout).toMatch(/first:(24 80|41 123) size:41 123\r*\n/);
      expect(r.stdout).toContain('read:typed');
      expect(r.code, r.stdout).toBe(0);
    }, 120_000);
  }

  it('a container that is not running, or an unknown one, is refused before any URL is handed out', async () => {
    const unknown = await crictl(['exec', 'f'.repeat(64), 'true']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('no container');
    const c = clients(shim.socket);
    try {
      const bad = await call<ExecResponse>((cb) =>
        c.runtime.exec({ containerId: web, cmd: ['true'], tty: true, stdin: false, stdout: true, stderr: true }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(bad.err?.details).toContain('tty and stderr cannot both be true');
      const none = await call<ExecResponse>((cb) =>
        c.runtime.exec({ containerId: web, cmd: ['true'], tty: false, stdin: false, stdout: false, stderr: false }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(none.err?.details).toContain('one of stdin, stdout and stderr must be set');
    } finally {
      c.close();
    }
  });
});

describe('crictl attach', () => {
  it("relays stdin to the container's process and its output back", async () => {
    const a = spawnCrictl(['attach', '-i', talk]);
    a.child.stdin!.on('error', () => undefined);
    try {
      // The attach is up once its streams are: keep writing until the container answers.
      await waitFor(
        'the attached container answers',
        () => {
          if (a.child.exitCode !== null) throw new Error(`crictl attach exited ${a.child.exitCode}: ${a.err()}`);
          a.child.stdin!.write('hello\n');
          return a.out().includes('got:hello');
        },
        { timeoutMs: 30_000, intervalMs: 500 },
      ).catch((e: Error) => {
        throw new Error(`${e.message}\nstdout: ${a.out()}\nstderr: ${a.err()}\nshim: ${shim.logs().slice(-3000)}`);
      });
    } finally {
      a.child.kill('SIGKILL');
      await a.done;
    }
  }, 120_000);
});

describe('crictl port-forward', () => {
  for (const transport of ['spdy', 'websocket']) {
    it(`over ${transport}: a local port reaches the pod's port on its cell, connection after connection`, async () => {
      const local = await freePort();
      const pf = spawnCrictl(['port-forward', '--transport', transport, sandbox, `${local}:8080`]);
      try {
        await waitFor('crictl forwarding', () => pf.out().includes('Forwarding from') || pf.child.exitCode !== null, { timeoutMs: 30_000, intervalMs: 100 });
        expect(pf.child.exitCode, pf.err()).toBeNull();
        for (let i = 0; i < 3; i++) {
          const res = await fetch(`http://127.0.0.1:${local}/index.html`, { signal: AbortSignal.timeout(20_000) });
          expect(res.status).toBe(200);
          expect(await res.text()).toBe('hello-from-the-cell\n');
        }
      } finally {
        pf.child.kill('SIGTERM');
        await pf.done;
      }
    }, 120_000);
  }
});

describe('the URL is the credential', () => {
  it('a URL serves one connection: used again, it is not found', async () => {
    const c = clients(shim.socket);
    try {
      const pf = await call<PortForwardResponse>((cb) => c.runtime.portForward({ podSandboxId: sandbox, port: [8080] }, new Metadata(), { deadline: deadline() }, cb));
      expect(pf.err).toBeUndefined();
      const url = pf.res!.url;
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/portforward\/[A-Za-z0-9_-]{43}$/);
      const upgrade = () =>
        new Promise<number>((resolve, reject) => {
          const req = request(url, { method: 'POST', headers: { connection: 'Upgrade', upgrade: 'SPDY/3.1', 'x-stream-protocol-version': 'portforward.k8s.io' } });
          req.on('upgrade', (res, socket) => (socket.destroy(), resolve(res.statusCode ?? 0)));
          req.on('response', (res) => (res.resume(), resolve(res.statusCode ?? 0)));
          req.on('error', reject);
          req.end();
        });
      expect(await upgrade()).toBe(101);
      expect(await upgrade()).toBe(404);
      const unknown = await call<PortForwardResponse>((cb) => c.runtime.portForward({ podSandboxId: 'f'.repeat(64), port: [80] }, new Metadata(), { deadline: deadline() }, cb));
      expect(unknown.err?.details).toContain('no pod sandbox');
    } finally {
      c.close();
    }
  });
});

describe("the kubelet's WebSocket protocols, as the API server speaks them to a kubelet", () => {
  /** The URL of a new streaming request, as ws:// (the shim's streaming server is plain HTTP). */
  const wsUrl = async (get: (c: ReturnType<typeof clients>, cb: (e: ServiceError | null, r: { url: string }) => void) => unknown) => {
    const c = clients(shim.socket);
    try {
      const r = await call<{ url: string }>((cb) => get(c, cb));
      expect(r.err).toBeUndefined();
      return r.res!.url.replace(/^http:/, 'ws:');
    } finally {
      c.close();
    }
  };
  /** Every message of a WebSocket until it closes, as [channel, data]. */
  const collect = (ws: WebSocket, base64: boolean) =>
    new Promise<[number, Buffer][]>((resolve, reject) => {
      const got: [number, Buffer][] = [];
      ws.on('message', (raw: Buffer, binary: boolean) => {
        if (base64) {
          expect(binary).toBe(false);
          got.push([raw[0]! - 48, Buffer.from(raw.subarray(1).toString('latin1'), 'base64')]);
        } else got.push([raw[0]!, raw.subarray(1)]);
      });
      ws.on('close', () => resolve(got));
      ws.on('error', reject);
    });
  const opened = (ws: WebSocket) => new Promise<void>((resolve, reject) => (ws.once('open', () => resolve()), ws.once('error', reject)));

  for (const protocol of ['v4.channel.k8s.io', 'v4.base64.channel.k8s.io']) {
    it(`port-forward over ${protocol}: channels 0 and 1 open with the port, the data channel reaches the pod's port`, async () => {
      const base64 = protocol.includes('base64');
      const url = await wsUrl((c, cb) => c.runtime.portForward({ podSandboxId: sandbox, port: [8080] }, new Metadata(), { deadline: deadline() }, cb));
      const ws = new WebSocket(url, [protocol]);
      const messages = collect(ws, base64);
      await opened(ws);
      expect(ws.protocol).toBe(protocol);
      const request = Buffer.from('GET /index.html HTTP/1.0\r\n\r\n');
      ws.send(base64 ? `0${request.toString('base64')}` : Buffer.concat([Buffer.from([0]), request]));
      // httpd answers and closes its side; the forward ends, and with its only port the connection.
      const got = await messages;
      const port = Buffer.from([8080 & 0xff, 8080 >> 8]);
      expect(got[0]).toEqual([0, port]);
      expect(got[1]).toEqual([1, port]);
      const data = Buffer.concat(
        got
          .slice(2)
          .filter(([ch]) => ch === 0)
          .map(([, b]) => b),
      ).toString();
      expect(data).toMatch(/^HTTP\/1\.[01] 200/);
      expect(data).toContain('hello-from-the-cell');
      expect(got.filter(([ch, b]) => ch === 1 && b.length > 2)).toEqual([]);
    }, 60_000);
  }

  it('exec over v4.base64.channel.k8s.io: output in base64 text messages, the final Status on channel 3', async () => {
    const url = await wsUrl((c, cb) =>
      c.runtime.exec(
        { containerId: web, cmd: ['sh', '-c', 'echo out; echo err >&2; exit 3'], tty: false, stdin: false, stdout: true, stderr: true },
        new Metadata(),
        { deadline: deadline() },
        cb,
      ),
    );
    const ws = new WebSocket(url, ['v4.base64.channel.k8s.io']);
    const got = await collect(ws, true);
    const text = (ch: number) => Buffer.concat(got.filter(([c]) => c === ch).map(([, b]) => b)).toString();
    expect(text(1)).toBe('out\n');
    expect(text(2)).toBe('err\n');
    const status = JSON.parse(text(3)) as { status: string; reason: string; details: { causes: { reason: string; message: string }[] } };
    expect(status).toMatchObject({ status: 'Failure', reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: '3' }] } });
  }, 60_000);
});

describe("--streaming-idle-timeout (the kubelet's streamingConnectionIdleTimeout)", () => {
  const IDLE = '2s';
  beforeAll(async () => {
    // The same sandbox and containers, served by a shim with a short idle timeout.
    leftovers.push(shim.dir);
    await shim.stop({ keepState: true });
    shim = await startShim([...shimArgs, '--streaming-idle-timeout', IDLE], { stateDir: shim.stateDir });
  }, 120_000);

  for (const transport of ['spdy', 'websocket']) {
    it(`over ${transport}: a stream with no traffic either way is closed; one with output every 0.2 s runs to its end`, async () => {
      const t = ['--transport', transport];
      // Output every 0.2 s for 4 s: twice the timeout, never idle.
      const busy = await crictl(['exec', ...t, web, 'sh', '-c', 'for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo tick$i; sleep 0.2; done']);
      expect(busy.code, `${busy.stderr}\n--- shim:\n${shim.logs().slice(-3000)}`).toBe(0);
      expect(busy.stdout.trim().split('\n')).toEqual(Array.from({ length: 20 }, (_, i) => `tick${i + 1}`));
      // Silent for 60 s: closed after 2 s without a byte, long before the command ends.
      const before = (shim.logs().match(/stream idle/g) ?? []).length;
      const t0 = Date.now();
      const idle = await crictl(['exec', ...t, web, 'sh', '-c', 'echo started; sleep 60; echo finished']);
      expect(Date.now() - t0, idle.stderr).toBeLessThan(40_000);
      // The command's output stops where the stream was cut. (crictl's exit code is the client's
      // reading: client-go's SPDY executor takes a closed connection without a status as
      // success, as kubectl exec does against a kubelet; over WebSocket it fails.)
      expect(idle.stdout.trim()).toBe('started');
      if (transport === 'websocket') expect(idle.code).not.toBe(0);
      expect(idle.stderr).not.toContain('command terminated');
      await waitFor('the shim logged the idle close', () => (shim.logs().match(/stream idle/g) ?? []).length > before, { timeoutMs: 10_000 });
    }, 120_000);
  }

  it('an idle port-forward is closed too, and a used one is not', async () => {
    const local = await freePort();
    const pf = spawnCrictl(['port-forward', sandbox, `${local}:8080`]);
    try {
      await waitFor('crictl forwarding', () => pf.out().includes('Forwarding from') || pf.child.exitCode !== null, { timeoutMs: 30_000, intervalMs: 100 });
      expect(pf.child.exitCode, pf.err()).toBeNull();
      // A request every 0.5 s for 5 s keeps it open.
      for (let i = 0; i < 10; i++) {
        const res = await fetch(`http://127.0.0.1:${local}/index.html`, { signal: AbortSignal.timeout(20_000) });
        expect(await res.text()).toBe('hello-from-the-cell\n');
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(pf.child.exitCode, pf.err()).toBeNull();
      // Then nothing: the shim closes the session and crictl's forward ends.
      const r = await Promise.race([pf.done, new Promise<undefined>((res) => setTimeout(() => res(undefined), 40_000))]);
      expect(r, 'crictl port-forward still running 40 s after its last request').toBeDefined();
      // The shim's log reaches the test a moment after crictl saw the close.
      await waitFor('the shim logged the idle port-forward', () => /portForward.*stream idle/.test(shim.logs()), { timeoutMs: 10_000 });
    } finally {
      pf.child.kill('SIGTERM');
      await pf.done;
    }
  }, 120_000);
});

describe('--streaming-tls-cert and --streaming-tls-key: the streaming server over HTTPS', () => {
  let pki: ReturnType<typeof makeTestPki>;
  beforeAll(async () => {
    pki = makeTestPki();
    leftovers.push(shim.dir, pki.dir);
    await shim.stop({ keepState: true });
    shim = await startShim([...shimArgs, '--streaming-tls-cert', pki.server.cert, '--streaming-tls-key', pki.server.key], { stateDir: shim.stateDir });
  }, 120_000);

  /** crictl verifies the server against --tls-ca (it wants a client pair with it, which this server does not ask for). */
  const tlsFlags = (ca: string) => ['--tls-ca', ca, '--tls-cert', pki.client.cert, '--tls-key', pki.client.key];

  it('the URLs say https; crictl exec and port-forward verify the certificate against the CA, over SPDY and WebSocket', async () => {
    const c = clients(shim.socket);
    try {
      const r = await call<ExecResponse>((cb) =>
        c.runtime.exec({ containerId: web, cmd: ['true'], tty: false, stdin: false, stdout: true, stderr: false }, new Metadata(), { deadline: deadline() }, cb),
      );
      expect(r.res?.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]{43}$/);
    } finally {
      c.close();
    }
    for (const transport of ['spdy', 'websocket']) {
      expect(await ok(['exec', '--transport', transport, ...tlsFlags(pki.ca), web, 'sh', '-c', 'echo over-tls-$((6*7))'])).toBe('over-tls-42');
    }
    const local = await freePort();
    const pf = spawnCrictl(['port-forward', ...tlsFlags(pki.ca), sandbox, `${local}:8080`]);
    try {
      await waitFor('crictl forwarding', () => pf.out().includes('Forwarding from') || pf.child.exitCode !== null, { timeoutMs: 30_000, intervalMs: 100 });
      expect(pf.child.exitCode, pf.err()).toBeNull();
      const res = await fetch(`http://127.0.0.1:${local}/index.html`, { signal: AbortSignal.timeout(20_000) });
      expect(await res.text()).toBe('hello-from-the-cell\n');
    } finally {
      pf.child.kill('SIGTERM');
      await pf.done;
    }
  }, 120_000);

  it('a client that trusts another CA is refused by its own check; plain HTTP reaches nothing', async () => {
    const rogue = await crictl(['exec', ...tlsFlags(join(pki.dir, 'rogue-ca.pem')), web, 'sh', '-c', 'echo should-not-run']);
    expect(rogue.code).not.toBe(0);
    expect(rogue.stderr).toMatch(/certificate signed by unknown authority|x509/);
    expect(rogue.stdout).not.toContain('should-not-run');
    const c = clients(shim.socket);
    try {
      const r = await call<ExecResponse>((cb) =>
        c.runtime.exec({ containerId: web, cmd: ['true'], tty: false, stdin: false, stdout: true, stderr: false }, new Metadata(), { deadline: deadline() }, cb),
      );
      const url = r.res!.url;
      // The same URL as plain HTTP: the TLS server does not answer it.
      const plain = await new Promise<string>((resolve) => {
        const req = request(url.replace(/^https:/, 'http:'), { method: 'POST', headers: { connection: 'Upgrade', upgrade: 'SPDY/3.1' } });
        req.on('upgrade', (_res, socket) => (socket.destroy(), resolve('upgraded')));
        req.on('response', (res) => (res.resume(), resolve(`status ${res.statusCode}`)));
        req.on('error', (e) => resolve(`error ${e.message}`));
        req.setTimeout(20_000, () => req.destroy(new Error('timeout')));
        req.end();
      });
      expect(plain).not.toBe('upgraded');
      // The plain attempt never got past TLS, so its token was not spent: over wss, trusting the CA,
      // it serves its one connection.
      const ws = new WebSocket(url.replace(/^https:/, 'wss:'), ['v4.channel.k8s.io'], { ca: readFileSync(pki.ca) });
      const closed = await new Promise<string>((resolve) => {
        ws.on('open', () => undefined);
        ws.on('close', (code) => resolve(`closed ${code}`));
        ws.on('error', (e) => resolve(`error ${e.message}`));
      });
      expect(closed).toBe('closed 1000');
    } finally {
      c.close();
    }
  }, 120_000);
});

describe('stopp', () => {
  it("kills the sandbox's running containers first and records their real exits (not -1), then the cell ends", async () => {
    await ok(['--timeout', '120s', 'stopp', sandbox]);
    for (const id of [web, talk]) {
      const s = JSON.parse(await ok(['inspect', id])) as { status: { state: string; exitCode: number; reason: string; message: string } };
      expect(s.status.state).toBe('CONTAINER_EXITED');
      // SIGKILL, no grace, as containerd stops a sandbox's containers.
      expect(s.status.exitCode, JSON.stringify(s.status)).toBe(137);
    }
    expect(await ok(['pods', '-q', '--state', 'notready'])).toBe(sandbox);
  }, 180_000);
});
