// The agent daemon (dist/cli.js) with --registry-config: a pod's image from a registry that
// serves TLS with a private CA and wants a client certificate (real docker-registry, real runc).
// Without the configuration the pod waits in ErrImagePull with the reason; with it, it runs.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, makeTestPki, pushBusybox, requireCommand, startRegistry, type RegistryServer, type TestPki } from '@cello/testkit';
import { status, type ServiceError } from '@grpc/grpc-js';
import { ConfigureRegistriesRequest, type CellAgentClient, type ConfigureRegistriesResponse } from '@cello/proto/cell';
import { connectAgent } from '../src/ctl/client.js';
import { defaultRunDir } from '../src/agent.js';
import { apply, pod, StatusWatch } from './helpers/agent.js';
import { requireTools } from './helpers/rootfs.js';

const CLI = fileURLToPath(new URL('../dist/cli.js', import.meta.url));
let pki: TestPki;
let reg: RegistryServer;
let image: string;
const procs = new Set<ChildProcess>();
const stateDirs: string[] = [];
const daemons = new Map<string, ChildProcess>();

async function startDaemon(extra: string[], stateDir = mkdtempSync(join(tmpdir(), 'cello-regcfg-'))): Promise<string> {
  if (!stateDirs.includes(stateDir)) stateDirs.push(stateDir);
  const port = await freePort();
  const p = spawn(
    process.execPath,
    [CLI, 'serve', '--listen', `127.0.0.1:${port}`, '--state-dir', stateDir, '--insecure-dev', '--cgroup-parent', `/cello-test/regcfg-${port}`, ...extra],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CELLO_LOG_LEVEL: 'warn' },
    },
  );
  procs.add(p);
  daemons.set(`127.0.0.1:${port}`, p);
  p.on('exit', () => procs.delete(p));
  let err = '';
  p.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`agent did not start within 15 s: ${err}`)), 15_000);
    p.stdout!.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('listening ')) {
        clearTimeout(t);
        resolve();
      }
    });
    p.on('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`agent exited with ${code}: ${err}`));
    });
  });
  return `127.0.0.1:${port}`;
}

beforeAll(async () => {
  requireTools();
  requireCommand('openssl', 'openssl');
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx turbo run build --filter=@cello/cell-agent)`);
  pki = makeTestPki();
  reg = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key, clientCas: [pki.ca], client: pki.client } });
  image = await pushBusybox(reg, 'private/busybox:1');
});

afterAll(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await reg?.stop();
  for (const d of stateDirs) rmSync(defaultRunDir(d), { recursive: true, force: true });
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

async function runPod(addr: string, name: string, until: (w: StatusWatch) => boolean, what: string): Promise<StatusWatch> {
  const client = connectAgent(addr, undefined);
  const watch = new StatusWatch(client);
  await watch.ready;
  await apply(client, { pod: pod(name, { terminationGracePeriodSeconds: 1, containers: [{ name: 'c', image, command: ['/bin/sh', '-c', 'sleep 3600'] }] }) });
  await watch.until(what, until, 30_000);
  await new Promise<void>((r) => client.deletePod({ gracePeriodSeconds: 1 }, () => r()));
  watch.close();
  client.close();
  return watch;
}

describe('agent --registry-config', () => {
  it('without the CA: ErrImagePull naming the unknown authority and the field to set', async () => {
    const addr = await startDaemon([]);
    const w = await runPod(addr, 'no-ca', (x) => ['ErrImagePull', 'ImagePullBackOff'].includes(x.waiting('c')?.reason ?? ''), 'pull refused');
    const why = [w.waiting('c')?.message ?? '', ...w.events.map((e) => e.message)].join('\n');
    expect(why).toMatch(/certificate signed by unknown authority; add the registry's CA/);
  });

  it('with the CA and the client certificate (a YAML file, paths relative to it): the pod runs', async () => {
    const file = join(pki.dir, 'registries.yaml');
    writeFileSync(file, `registries:\n  "${reg.host}":\n    caFile: ca.pem\n    client: {certFile: client.pem, keyFile: client.key}\n`);
    const addr = await startDaemon(['--registry-config', file]);
    await runPod(addr, 'with-ca', (x) => x.running('c'), 'c running');
  });

  it('a bad configuration stops the agent at start with the field named', async () => {
    const file = join(pki.dir, 'bad.yaml');
    writeFileSync(file, `registries:\n  "${reg.host}": {caFile: missing.pem}\n`);
    await expect(startDaemon(['--registry-config', file])).rejects.toThrow(new RegExp(`registries\\["${reg.host}"\\]\\.caFile: cannot read missing\\.pem: ENOENT`));
  });

  it('a corrupt or unreadable STATE/registries.json stops the agent at start, naming the file and what to do', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-regcfg-'));
    const file = join(stateDir, 'registries.json');
    const fix = /remove it and restart the agent: the controller sends it again when it next connects/;
    writeFileSync(file, '{"registries": {', { mode: 0o600 });
    const notJson = (await startDaemon([], stateDir).catch((e: unknown) => e)) as Error;
    expect(notJson.message).toContain(`${file}: not valid JSON (`);
    expect(notJson.message).toMatch(fix);
    writeFileSync(file, JSON.stringify({ registries: { [reg.host]: { mirrors: [{ host: 'http://x' }] } } }), { mode: 0o600 });
    const badField = (await startDaemon([], stateDir).catch((e: unknown) => e)) as Error;
    expect(badField.message).toMatch(new RegExp(`${file.replace(/[.]/g, '\\.')}: registries\\[".*"\\]\\.mirrors\\[0\\]\\.host`));
    expect(badField.message).toMatch(fix);
    rmSync(file);
    mkdirSync(file); // read fails (EISDIR): not taken for "no saved configuration"
    const unreadable = (await startDaemon([], stateDir).catch((e: unknown) => e)) as Error;
    expect(unreadable.message).toContain(`${file}: cannot read it (`);
    expect(unreadable.message).toMatch(fix);
  });

  // What a remote cell gets instead of a file: the controller's configuration over the agent API.
  function configure(addr: string, registriesJson: string): Promise<ConfigureRegistriesResponse> {
    const client: CellAgentClient = connectAgent(addr, undefined);
    return new Promise<ConfigureRegistriesResponse>((resolve, reject) =>
      client.configureRegistries(ConfigureRegistriesRequest.fromPartial({ registriesJson }), (err, r) => (err ? reject(err) : resolve(r))),
    ).finally(() => client.close());
  }

  it('ConfigureRegistries: inline PEMs applied to the next pull, kept (0600) for a restarted agent; bad input refused with the field named', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'cello-regcfg-'));
    const addr = await startDaemon([], stateDir);
    const cfg = {
      registries: { [reg.host]: { caPem: readFileSync(pki.ca, 'utf8'), client: { certPem: readFileSync(pki.client.cert, 'utf8'), keyPem: readFileSync(pki.client.key, 'utf8') } } },
    };
    // Refused, and nothing kept: a file name (it would be read on the cell), not JSON, a bad field.
    const refused = async (json: string, why: RegExp) => {
      const err = (await configure(addr, json).catch((e: unknown) => e)) as ServiceError;
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.details).toMatch(why);
    };
    await refused(JSON.stringify({ registries: { [reg.host]: { caFile: '/etc/passwd' } } }), /caFile: files are not read here: give the PEM inline/);
    await refused('{registries', /registriesJson: not JSON/);
    await refused(JSON.stringify({ registries: { [reg.host]: { mirrors: [{ host: 'http://x' }] } } }), /registries\[".*"\]\.mirrors\[0\]\.host/);
    expect(existsSync(join(stateDir, 'registries.json'))).toBe(false);

    expect((await configure(addr, JSON.stringify(cfg))).hosts).toEqual([reg.host]);
    expect(statSync(join(stateDir, 'registries.json')).mode & 0o777).toBe(0o600);
    await runPod(addr, 'configured', (x) => x.running('c'), 'c running');

    // A restarted agent (no flags) pulls the same way: a tag it never pulled, so it must fetch.
    daemons.get(addr)!.kill('SIGKILL');
    await new Promise((r) => daemons.get(addr)!.once('exit', r));
    image = await pushBusybox(reg, 'private/busybox:2');
    const again = await startDaemon([], stateDir);
    await runPod(again, 'after-restart', (x) => x.running('c'), 'c running after restart');
  });
});
