// `cell-agent first-boot` (what cello-first-boot.service runs) against the IMDS test double and
// a loopback GCE metadata stand-in: the files it writes, once only, and the refusals.
import { createServer } from 'node:http';
import { mkdtemp, readFile, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { startImdsTestDouble } from '@cello/testkit';
import { pino, type Logger } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { firstBoot, type FirstBootOptions } from '../../src/bootstrap/index.js';
import { agentConfigArgs, whichCloud } from '../../src/bootstrap/first-boot.js';
import { makeTestCa } from './test-ca.js';

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function dirs(): Promise<{ stateDir: string; confDir: string }> {
  const d = await mkdtemp(join(tmpdir(), 'cello-first-boot-'));
  cleanups.push(() => rm(d, { recursive: true, force: true }));
  return { stateDir: join(d, 'state'), confDir: join(d, 'conf') };
}

function capturingLogger(): { logger: Logger; text: () => string } {
  let out = '';
  const sink = new Writable({
    write(chunk, _enc, cb) {
      out += String(chunk);
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), text: () => out };
}

async function userData(over: Record<string, unknown> = {}): Promise<string> {
  const ca = await makeTestCa();
  return JSON.stringify({
    cello: 'cell-bootstrap/v1',
    controllerId: 'ctl-test',
    cellId: 'cell-0001',
    agentPort: 17443,
    caCertPem: ca.certPem,
    token: 'cbt_one-time-token-not-for-logs',
    tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
    ...over,
  });
}

function options(o: Partial<FirstBootOptions> & Pick<FirstBootOptions, 'stateDir' | 'confDir' | 'logger'>): FirstBootOptions {
  return { metadata: 'aws', awsEndpoint: 'http://127.0.0.1:9', gceEndpoint: 'http://127.0.0.1:9', listenHost: '127.0.0.1', timeoutSeconds: 5, ...o };
}

describe('cell-agent first-boot', () => {
  it('reads the user data over IMDSv2, writes the agent settings and the bootstrap files, and runs only once', async () => {
    const ud = await userData({ agentConfig: { insecureRegistries: ['127.0.0.1:5000'], pidsLimit: 512, auditTranscripts: true, futureKnob: 1 } });
    const imds = await startImdsTestDouble({ '/latest/user-data': ud, '/latest/meta-data/instance-id': 'i-0abc123\n' });
    cleanups.push(() => imds.stop());
    const d = await dirs();
    const log = capturingLogger();

    const r = await firstBoot(options({ ...d, awsEndpoint: imds.url, logger: log.logger }));
    expect(r).toEqual({ outcome: 'written', cloud: 'aws', cellId: 'cell-0001', instanceId: 'i-0abc123' });
    expect(imds.unauthorized).toBe(0);
    expect(imds.tokensIssued).toBe(1);

    const env = await readFile(join(d.confDir, 'agent.env'), 'utf8');
    expect(env).toContain('CELLO_AGENT_LISTEN=127.0.0.1:17443\n');
    expect(env).toContain('CELLO_CELL_ID=cell-0001\n');
    expect(env).toContain('CELLO_CONTROLLER_ID="ctl-test"\n');
    expect(env).toContain('CELLO_INSTANCE_ID=i-0abc123\n');
    expect(env).toContain(`CELLO_AGENT_ARGS=--insecure-registry 127.0.0.1:5000 --pids-limit 512 --audit-transcripts --instance-notices aws:${imds.url}\n`);
    expect(await readFile(join(d.stateDir, 'bootstrap', 'user-data.json'), 'utf8')).toBe(ud);
    expect((await stat(join(d.stateDir, 'bootstrap', 'user-data.json'))).mode & 0o777).toBe(0o600);
    expect(await readFile(join(d.stateDir, 'bootstrap', 'ca.pem'), 'utf8')).toBe(JSON.parse(ud).caCertPem);
    expect(existsSync(join(d.stateDir, 'bootstrap', 'done'))).toBe(true);
    expect(log.text()).toContain('ignoring an agentConfig setting this image does not know');
    expect(log.text()).not.toContain('one-time-token-not-for-logs');

    // Only once: the token is single-use.
    const again = await firstBoot(options({ ...d, awsEndpoint: imds.url, logger: log.logger }));
    expect(again).toEqual({ outcome: 'already-bootstrapped' });
    expect(log.text()).toContain('already bootstrapped; nothing to do');
    expect(imds.tokensIssued).toBe(1);
  });

  it('reads the GCE metadata server, with Metadata-Flavor: Google', async () => {
    const ud = await userData({ cellId: 'cell-0002', agentPort: 17444 });
    const flavors: (string | undefined)[] = [];
    const server = createServer((req, res) => {
      const flavor = req.headers['metadata-flavor'];
      flavors.push(typeof flavor === 'string' ? flavor : undefined);
      if (flavor !== 'Google') return void res.writeHead(403).end();
      if (req.url === '/computeMetadata/v1/instance/attributes/user-data') return void res.writeHead(200).end(ud);
      if (req.url === '/computeMetadata/v1/instance/id') return void res.writeHead(200).end('4242');
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
    const port = (server.address() as { port: number }).port;
    const d = await dirs();

    const r = await firstBoot(options({ ...d, metadata: 'gce', gceEndpoint: `http://127.0.0.1:${port}`, logger: capturingLogger().logger }));
    expect(r).toEqual({ outcome: 'written', cloud: 'gce', cellId: 'cell-0002', instanceId: '4242' });
    expect(flavors.length).toBe(2);
    expect(flavors.every((f) => f === 'Google')).toBe(true);
    expect(await readFile(join(d.confDir, 'agent.env'), 'utf8')).toContain('CELLO_AGENT_LISTEN=127.0.0.1:17444\n');
  });

  it('refuses bad user data naming the field, and writes nothing', async () => {
    const { agentPort: _omit, ...noPort } = JSON.parse(await userData()) as Record<string, unknown>;
    const imds = await startImdsTestDouble({ '/latest/user-data': JSON.stringify(noPort) });
    cleanups.push(() => imds.stop());
    const d = await dirs();
    await expect(firstBoot(options({ ...d, awsEndpoint: imds.url, logger: capturingLogger().logger }))).rejects.toThrow(/user data field agentPort/);
    expect(existsSync(join(d.confDir, 'agent.env'))).toBe(false);
    expect(existsSync(join(d.stateDir, 'bootstrap', 'done'))).toBe(false);

    imds.set('/latest/user-data', await userData({ agentConfig: { metricsListen: '0.0.0.0:9100; rm -rf /' } }));
    await expect(firstBoot(options({ ...d, awsEndpoint: imds.url, logger: capturingLogger().logger }))).rejects.toThrow('user data: agentConfig.metricsListen: expected host:port');
    expect(existsSync(join(d.confDir, 'agent.env'))).toBe(false);
  });

  it('fails at once for an instance without user data', async () => {
    const imds = await startImdsTestDouble();
    cleanups.push(() => imds.stop());
    const d = await dirs();
    await expect(firstBoot(options({ ...d, awsEndpoint: imds.url, logger: capturingLogger().logger }))).rejects.toThrow('this instance has no user data');
  });

  it('retries a metadata service that does not answer, until the timeout, naming the last error', async () => {
    const d = await dirs();
    const log = capturingLogger();
    const t0 = Date.now();
    await expect(firstBoot(options({ ...d, awsEndpoint: 'http://127.0.0.1:9', timeoutSeconds: 1, logger: log.logger }))).rejects.toThrow(
      /metadata service \(aws\) did not answer in time/,
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(log.text()).toContain('metadata service not ready; retrying');
  });

  it('auto picks the cloud from the DMI vendor and refuses to guess otherwise', async () => {
    const d = await dirs();
    const dmiDir = join(d.stateDir, 'dmi');
    await mkdir(dmiDir, { recursive: true });
    await writeFile(join(dmiDir, 'sys_vendor'), 'Amazon EC2\n');
    expect(whichCloud({ metadata: 'auto', confDir: d.confDir, dmiDir })).toBe('aws');
    await writeFile(join(dmiDir, 'sys_vendor'), 'Google\n');
    expect(whichCloud({ metadata: 'auto', confDir: d.confDir, dmiDir })).toBe('gce');
    await writeFile(join(dmiDir, 'sys_vendor'), 'QEMU\n');
    expect(() => whichCloud({ metadata: 'auto', confDir: d.confDir, dmiDir })).toThrow(`set CELLO_METADATA=aws or gce in ${d.confDir}/first-boot.env`);
    expect(() => whichCloud({ metadata: 'azure', confDir: d.confDir, dmiDir })).toThrow('CELLO_METADATA: expected aws, gce or auto, got "azure"');
  });

  it('turns only known agentConfig keys into serve flags', () => {
    expect(agentConfigArgs({ metricsListen: '0.0.0.0:9100' })).toEqual(['--metrics-listen', '0.0.0.0:9100']);
    expect(agentConfigArgs({ auditTranscripts: false })).toEqual([]);
    expect(() => agentConfigArgs({ pidsLimit: 0 })).toThrow('user data: agentConfig.pidsLimit: expected a positive integer');
    expect(() => agentConfigArgs({ insecureRegistries: ['a b:1'] })).toThrow('user data: agentConfig.insecureRegistries: expected a list of host:port');
  });
});
