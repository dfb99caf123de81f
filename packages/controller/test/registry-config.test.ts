// The controller's `registries:` block: validated with the field named, its files read relative
// to the configuration, and handed to every cell as contents over the agent API
// (ConfigureRegistries, before the cell is Ready: the path a remote cell takes too), end to end:
// a pod from a TLS registry signed by a private CA that wants a client certificate.
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';
import { PodPhase } from '@cello/proto/cell';
import { pino } from 'pino';
import { makeTestPki, pushBusybox, startRegistry, type TestPki } from '@cello/testkit';
import { loadConfig, parseConfig } from '../src/config.js';
import { Cluster, type Registry } from './helpers/cluster.js';

let pki: TestPki;
beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => {
  if (pki) rmSync(pki.dir, { recursive: true, force: true });
});

const base = { controllerId: 'dev', security: { mode: 'insecure-dev' } };

describe('configuration: registries', () => {
  it('names the field of each error, with the file it is in', () => {
    expect(() => parseConfig({ ...base, registries: { 'reg:5000': { mirrors: [{ host: 'https://m' }] } } }, 'c.yaml')).toThrow(
      /^c\.yaml: registries\["reg:5000"\]\.mirrors\[0\]\.host: expected a registry host/,
    );
    expect(() => parseConfig({ ...base, registries: { 'reg:5000': { client: { certFile: 'c.pem' } } } }, 'c.yaml')).toThrow(
      /^c\.yaml: registries\["reg:5000"\]\.client: give the client key/,
    );
    expect(() => parseConfig({ ...base, registries: ['reg:5000'] }, 'c.yaml')).toThrow(/^c\.yaml: registries: /);
  });

  it('reads CA and client files relative to the configuration file; absent means none', () => {
    const file = join(pki.dir, 'controller.yaml');
    writeFileSync(
      file,
      `controllerId: dev\nsecurity: {mode: insecure-dev}\nregistries:\n  "reg.internal:5443": {caFile: ca.pem, client: {certFile: client.pem, keyFile: client.key}}\n`,
    );
    const c = loadConfig(file);
    expect(c.registries['reg.internal:5443']!.caPem).toEqual([readFileSync(pki.ca, 'utf8')]);
    expect(c.registries['reg.internal:5443']!.client!.certPem).toBe(readFileSync(pki.client.cert, 'utf8'));
    expect(parseConfig(base).registries).toEqual({});
    // Logged as a block or inside the whole configuration, the client key is redacted.
    const lines: string[] = [];
    const log = pino({ redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR } }, { write: (l: string) => void lines.push(l) });
    log.info({ registries: c.registries }, 'registries');
    log.info({ config: c }, 'config');
    expect(lines).toHaveLength(2);
    for (const l of lines) {
      expect(l).not.toContain('PRIVATE KEY');
      expect(l).toContain('"keyPem":"[redacted]"');
    }
  });
});

describe('a local cell pulls from a private-CA, client-certificate registry', () => {
  let registry: Registry;
  let cl: Cluster;
  beforeAll(async () => {
    const server = await startRegistry({ tls: { certificate: pki.server.cert, key: pki.server.key, clientCas: [pki.ca], client: pki.client } });
    registry = { server, image: await pushBusybox(server, 'private/busybox:1') };
    cl = new Cluster({ registry, registries: { [server.host]: { caFile: pki.ca, client: { certFile: pki.client.cert, keyFile: pki.client.key } } } });
    await cl.start();
  }, 120_000);
  afterAll(async () => {
    await cl?.stop();
    await registry?.server.stop();
  }, 60_000);

  it('the pod runs; the cell got the contents over its API, kept in a 0600 file, nothing on its command line', async () => {
    const applied = await cl.cellctl([
      'apply',
      '-f',
      cl.manifest(
        'private',
        `apiVersion: v1\nkind: Pod\nmetadata: { name: private }\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: ${registry.image}\n    command: ["sh", "-c", "while true; do sleep 1; done"]\n`,
      ),
    ]);
    expect(applied.stderr).toBe('');
    const pod = await cl.waitPod('private', 'running', (p) => p.status?.phase === PodPhase.POD_PHASE_RUNNING, 90_000);
    const file = join(cl.cellsRoot, pod.cellId, 'state', 'registries.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const handed = JSON.parse(readFileSync(file, 'utf8')) as { registries: Record<string, { caPem: string[]; client: { keyPem: string } }> };
    expect(handed.registries[registry.server.host]!.client.keyPem).toBe(readFileSync(pki.client.key, 'utf8'));
    const cmdline = readFileSync(`/proc/${cl.agentPid(pod.cellId)}/cmdline`, 'utf8');
    expect(cmdline).not.toContain('--registry-config');
    expect(cmdline).not.toContain('PRIVATE KEY');
  }, 120_000);
});
