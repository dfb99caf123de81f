// "A user can install the agent onto a plain Debian image and it becomes a cell that the
// controller bootstraps and runs pods on" — without a cloud or a VM: install.sh in a debootstrap
// rootfs (chroot), user data made by the controller's own encoder and served over IMDSv2 on
// loopback, the first boot and the agent started exactly as their systemd units say, the
// controller's bootstrap (one-time token, CSR signed by its CA) and then a pod over mTLS,
// pulled from a real registry and run by the runc that install.sh installed.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { ApplyPodRequest, CellAgentClient, DeletePodRequest, type GetStatusResponse } from '@cello/proto/cell';
import { podFromManifest } from '@cello/proto';
import { bootstrapCell, CertificateAuthority, EmbeddedStore, encodeUserData, mtlsAgentCredentials } from '@cello/controller';
import { freePort, pushBusybox, startRegistry, waitExit, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBundles, type Bundles } from './helpers/bundle.js';
import { Chroot } from './helpers/chroot.js';
import { startMetadataDouble, type MetadataDouble } from './helpers/imds.js';
import { installSh } from './helpers/paths.js';
import { ensureRootfs } from './helpers/rootfs.js';
import { execStart } from './helpers/units.js';

// The controller's CA, bootstrap client and user data encoder are not (yet) on its public
// surface; these are the real modules, loaded from its build.

const CELL_ID = 'cell-images-e2e';
let bundles: Bundles;
let m: Chroot;
let registry: RegistryServer;
let imds: MetadataDouble | undefined;
let store: { close(): Promise<void> } | undefined;
let ca: CertificateAuthority;
let agent: ChildProcess | undefined;
let agentOut = '';
let agentErr = '';
let storeDir: string;

function call<T>(fn: (cb: (err: ServiceError | null, r: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, r) => (err ? reject(err) : resolve(r))));
}

beforeAll(async () => {
  bundles = ensureBundles();
  m = new Chroot(ensureRootfs('base'));
  m.put(installSh, '/root/install.sh');
  m.put(bundles.tarball('amd64'), '/root/agent.tar.gz');
  m.put(`${bundles.tarball('amd64')}.sha256`, '/root/agent.tar.gz.sha256');
  registry = await startRegistry();
  storeDir = mkdtempSync(join(tmpdir(), 'cello-images-ca-'));
  const s = await EmbeddedStore.open({ dir: storeDir });
  store = s;
  ca = await CertificateAuthority.loadOrCreate({ store: s, encryptionKey: randomBytes(32) });
}, 900_000);

afterAll(async () => {
  if (agent && agent.exitCode === null && agent.pid) {
    // Whatever the test left running: the units first (they outlive the agent by design).
    m.runBeside(agent.pid, ['sh', '-c', 'for c in $(runc --root /var/lib/cello/agent/runc list -q); do runc --root /var/lib/cello/agent/runc delete -f "$c"; done']);
    agent.kill('SIGKILL');
    await waitExit(agent, { what: 'the agent' });
  }
  await imds?.close();
  await registry?.stop();
  await store?.close();
  if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  m?.destroy();
});

describe('a plain Debian 12 with install.sh', () => {
  it('boots into a cell that the controller bootstraps and runs a pod on, over mTLS', async () => {
    const image = await pushBusybox(registry, 'busybox:e2e');
    const install = m.run(['sh', '/root/install.sh', '--bundle', '/root/agent.tar.gz']);
    expect(install.status, install.stderr).toBe(0);

    // The user data the controller's aws provider would launch the instance with.
    const port = await freePort();
    const token = `cbt_${randomBytes(16).toString('hex')}`;
    const userData = encodeUserData({
      caCertPem: ca.certPem,
      token,
      tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      controllerId: 'ctl-images-test',
      cellId: CELL_ID,
      agentPort: port,
      agentConfig: { insecureRegistries: [registry.host] },
    }).toString('utf8');
    imds = await startMetadataDouble({ cloud: 'aws', userData, instanceId: 'i-0e2e000000000001' });
    // Only the endpoints differ from a cloud: the metadata double and a loopback listener.
    m.sh(
      `sed -i -e 's|^CELLO_METADATA=.*|CELLO_METADATA=aws|' -e 's|^CELLO_AWS_IMDS_ENDPOINT=.*|CELLO_AWS_IMDS_ENDPOINT=${imds.url}|' -e 's|^CELLO_AGENT_LISTEN_HOST=.*|CELLO_AGENT_LISTEN_HOST=127.0.0.1|' /etc/cello/first-boot.env`,
    );

    const read = (p: string) => {
      const r = m.run(['cat', p]);
      return r.status === 0 ? r.stdout : undefined;
    };
    const envArgs = (env: Record<string, string>) => Object.entries(env).map(([k, v]) => `${k}=${v}`);
    const firstBoot = execStart(m.sh('cat /etc/systemd/system/cello-first-boot.service'), read);
    const fb = await m.runAsync(['env', ...envArgs(firstBoot.env), ...firstBoot.argv]);
    expect(fb.status, fb.stdout + fb.stderr).toBe(0);

    const unit = execStart(m.sh('cat /etc/systemd/system/cell-agent.service'), read);
    expect(unit.argv).toEqual([
      '/usr/local/bin/cell-agent',
      'serve',
      '--listen',
      `127.0.0.1:${port}`,
      '--state-dir',
      '/var/lib/cello/agent',
      '--bootstrap-user-data',
      '/var/lib/cello/bootstrap/user-data.json',
      '--insecure-registry',
      registry.host,
      // First boot names the cloud's metadata service, so the agent watches it for spot notices.
      '--instance-notices',
      `aws:${imds!.url}`,
    ]);
    for (const pre of unit.pre) {
      const r = m.run(['env', ...envArgs(unit.env), ...pre]);
      expect(r.status, `ExecStartPre ${pre.join(' ')}: ${r.stderr}`).toBe(0);
    }
    agent = m.spawn(['env', ...envArgs(unit.env), ...unit.argv]);
    agent.stdout!.on('data', (d: Buffer) => (agentOut += d.toString()));
    agent.stderr!.on('data', (d: Buffer) => (agentErr += d.toString()));
    const failWithLogs = (e: Error) => {
      throw new Error(`${e.message}\nagent stdout:\n${agentOut}\nagent stderr:\n${agentErr.slice(-4000)}`);
    };
    await waitFor('the agent to serve the bootstrap', () => /^bootstrap listening /m.test(agentOut), { timeoutMs: 60_000 }).catch(failWithLogs);

    // Before its certificate, the cell serves nothing but the bootstrap.
    const early = new CellAgentClient(`127.0.0.1:${port}`, credentials.createSsl(null, null, null, { rejectUnauthorized: false }));
    await expect(call((cb) => early.getStatus({}, cb))).rejects.toMatchObject({ code: 12 });
    early.close();

    const issued = await bootstrapCell({ address: `127.0.0.1:${port}`, cellId: CELL_ID, token, ca, ips: ['127.0.0.1'], timeoutMs: 60_000 });
    expect(issued.certPem).toContain('BEGIN CERTIFICATE');
    await waitFor('the agent to serve mTLS', () => /^listening /m.test(agentOut), { timeoutMs: 60_000 }).catch(failWithLogs);

    // A client without a certificate from the controller's CA is refused.
    const anon = new CellAgentClient(`127.0.0.1:${port}`, credentials.createSsl(Buffer.from(ca.certPem)), { 'grpc.ssl_target_name_override': CELL_ID });
    await expect(call((cb) => anon.getStatus({}, cb))).rejects.toMatchObject({ code: 14 });
    anon.close();

    const client = await ca.issueClientCertificate('controller');
    const creds = mtlsAgentCredentials(() => ({ caPem: ca.certPem, certPem: client.certPem, keyPem: client.keyPem }));
    const c = new CellAgentClient(`127.0.0.1:${port}`, creds.forCell(CELL_ID), creds.options?.(CELL_ID) ?? {});
    try {
      const { pod } = podFromManifest(`
apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: default}
spec:
  containers:
    - name: main
      image: ${image}
      command: [sh, -c, 'echo hello from the cell; exec sleep 3600']
`);
      await call((cb) => c.applyPod(ApplyPodRequest.fromPartial({ generation: 1, pod }), cb));
      const running = await waitFor(
        'the pod to run on the cell',
        async () => {
          const s = await call<GetStatusResponse>((cb) => c.getStatus({}, cb));
          return s.status?.containerStatuses[0]?.state?.state?.$case === 'running' ? s : undefined;
        },
        { timeoutMs: 120_000, intervalMs: 500 },
      ).catch(failWithLogs);
      expect(running.status?.containerStatuses[0]?.name).toBe('main');

      // It is a real runc container, under the runc that install.sh installed.
      let list = '';
      await waitFor(
        'runc to list the unit as running',
        () => {
          list = m.runBeside(agent!.pid!, ['runc', '--root', '/var/lib/cello/agent/runc', 'list']).stdout;
          return /\srunning\s/.test(list);
        },
        { timeoutMs: 30_000, intervalMs: 500 },
      ).catch((e: Error) => failWithLogs(new Error(`${e.message}\nrunc list:\n${list}`)));

      await call((cb) => c.deletePod(DeletePodRequest.fromPartial({ gracePeriodSeconds: 0 }), cb));
      await waitFor('the pod to stop', () => m.runBeside(agent!.pid!, ['runc', '--root', '/var/lib/cello/agent/runc', 'list', '-q']).stdout.trim() === '', {
        timeoutMs: 60_000,
        intervalMs: 500,
      });
    } finally {
      c.close();
    }
  }, 600_000);
});
