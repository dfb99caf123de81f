// The boot test: a bootable Debian 12 (Debian's kernel and initramfs) with install.sh run on it
// becomes a raw disk image; qemu boots it (software emulation), systemd runs the first boot —
// which reads the user data from 169.254.169.254 over IMDSv2, exactly as on EC2 — and starts
// the agent; the controller bootstraps the cell through a forwarded port on loopback and runs a
// pod on it, pulled from a real registry. The guest's network is qemu's restricted user mode:
// it reaches only the metadata double and the registry, both on the host's loopback.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ServiceError } from '@grpc/grpc-js';
import { ApplyPodRequest, CellAgentClient, GetStatusResponse } from '@cello/proto/cell';
import { podFromManifest } from '@cello/proto';
import { bootstrapCell, CertificateAuthority, EmbeddedStore, encodeUserData, mtlsAgentCredentials } from '@cello/controller';
import { freePort, pushBusybox, startRegistry, waitFor, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBundles } from './helpers/bundle.js';
import { Chroot } from './helpers/chroot.js';
import { startMetadataDouble, type MetadataDouble } from './helpers/imds.js';
import { installSh } from './helpers/paths.js';
import { ensureRootfs } from './helpers/rootfs.js';
import { bootVm, makeDisk, type Vm } from './helpers/vm.js';

const CELL_ID = 'cell-boot-test';
const AGENT_PORT = 7443;
// Where the guest sees the registry: an address of the guest network forwarded to the host.
const GUEST_REGISTRY = { addr: '169.254.170.2', port: 5000 };

let m: Chroot | undefined;
let vm: Vm | undefined;
let registry: RegistryServer | undefined;
let imds: MetadataDouble | undefined;
let store: { close(): Promise<void> } | undefined;
let work: string;

function call<T>(fn: (cb: (err: ServiceError | null, r: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, r) => (err ? reject(err) : resolve(r))));
}

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'cello-boot-'));
}, 60_000);

afterAll(async () => {
  await vm?.stop();
  await imds?.close();
  await registry?.stop();
  await store?.close();
  m?.destroy();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the cell image booted under qemu', () => {
  it('runs the first boot and the agent from systemd, and the controller bootstraps it and runs a pod', async () => {
    const t0 = Date.now();
    const phase = (name: string) => process.stderr.write(`[boot test] ${name} at ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    const bundles = ensureBundles();
    m = new Chroot(ensureRootfs('bootable'));
    m.put(installSh, '/root/install.sh');
    m.put(bundles.tarball('amd64'), '/root/agent.tar.gz');
    m.put(`${bundles.tarball('amd64')}.sha256`, '/root/agent.tar.gz.sha256');
    const install = m.run(['sh', '/root/install.sh', '--bundle', '/root/agent.tar.gz', '--metadata', 'aws']);
    expect(install.status, install.stderr).toBe(0);
    m.sh('rm -f /root/agent.tar.gz /root/agent.tar.gz.sha256');
    // Test-only drop-in: the agent's and the first boot's logs also go to the serial console,
    // which the test prints when something fails. The units themselves are as installed.
    for (const unit of ['cell-agent', 'cello-first-boot']) {
      m.sh(
        `mkdir -p /etc/systemd/system/${unit}.service.d && printf '[Service]\\nStandardOutput=journal+console\\nStandardError=journal+console\\n' > /etc/systemd/system/${unit}.service.d/console.conf`,
      );
    }
    const disk = makeDisk(m, work);
    phase('disk image made');

    registry = await startRegistry();
    const image = (await pushBusybox(registry, 'busybox:boot')).replace(registry.host, `${GUEST_REGISTRY.addr}:${GUEST_REGISTRY.port}`);
    const storeDir = join(work, 'store');
    const s = await EmbeddedStore.open({ dir: storeDir });
    store = s;
    const ca = await CertificateAuthority.loadOrCreate({ store: s, encryptionKey: randomBytes(32) });
    const token = `cbt_${randomBytes(16).toString('hex')}`;
    imds = await startMetadataDouble({
      cloud: 'aws',
      instanceId: 'i-0b00700000000001',
      userData: encodeUserData({
        caCertPem: ca.certPem,
        token,
        tokenExpiresAt: new Date(Date.now() + 900_000).toISOString(),
        controllerId: 'ctl-boot-test',
        cellId: CELL_ID,
        agentPort: AGENT_PORT,
        agentConfig: { insecureRegistries: [`${GUEST_REGISTRY.addr}:${GUEST_REGISTRY.port}`] },
      }).toString('utf8'),
    });
    const agentHostPort = await freePort();
    vm = bootVm({
      disk,
      hostfwd: [{ hostPort: agentHostPort, guestPort: AGENT_PORT }],
      guestfwd: [
        { guestAddr: '169.254.169.254', guestPort: 80, hostPort: Number(new URL(imds.url).port) },
        { guestAddr: GUEST_REGISTRY.addr, guestPort: GUEST_REGISTRY.port, hostPort: registry.port },
      ],
      consoleLog: join(work, 'console.log'),
    });
    const withConsole = (e: Error) => {
      throw new Error(`${e.message}\n--- guest console (last 12000 chars) ---\n${vm!.console().slice(-12000)}`);
    };
    phase('qemu started');

    await waitFor('the guest to read its user data over IMDSv2', () => imds!.requests.some((r) => r.path === '/latest/user-data' && r.token), {
      timeoutMs: 420_000,
      intervalMs: 1000,
    }).catch(withConsole);
    phase('first boot read the user data');
    expect(imds.requests[0]).toMatchObject({ method: 'PUT', path: '/latest/api/token' });

    const issued = await bootstrapCell({ address: `127.0.0.1:${agentHostPort}`, cellId: CELL_ID, token, ca, ips: ['127.0.0.1'], timeoutMs: 240_000 }).catch(withConsole);
    expect(issued.certPem).toContain('BEGIN CERTIFICATE');
    phase('cell bootstrapped');

    const client = await ca.issueClientCertificate('controller');
    const creds = mtlsAgentCredentials(() => ({ caPem: ca.certPem, certPem: client.certPem, keyPem: client.keyPem }));
    const c = new CellAgentClient(`127.0.0.1:${agentHostPort}`, creds.forCell(CELL_ID), creds.options?.(CELL_ID) ?? {});
    try {
      const status = await waitFor('the agent to serve mTLS', () => call<GetStatusResponse>((cb) => c.getStatus({}, cb)), { timeoutMs: 120_000, intervalMs: 1000 }).catch(
        withConsole,
      );
      expect(status).toBeDefined();
      const { pod } = podFromManifest(`
apiVersion: v1
kind: Pod
metadata: {name: booted, namespace: default}
spec:
  containers:
    - name: main
      image: ${image}
      command: [sh, -c, 'exec sleep 3600']
`);
      await call((cb) => c.applyPod(ApplyPodRequest.fromPartial({ generation: 1, pod }), cb));
      let last: GetStatusResponse | undefined;
      const running = await waitFor(
        'the pod to run in the VM',
        async () => {
          last = await call<GetStatusResponse>((cb) => c.getStatus({}, cb));
          return last.status?.containerStatuses[0]?.state?.state?.$case === 'running' ? last : undefined;
        },
        { timeoutMs: 240_000, intervalMs: 1000 },
      ).catch((e: Error) => withConsole(new Error(`${e.message}\nlast status: ${JSON.stringify(GetStatusResponse.toJSON(last ?? GetStatusResponse.fromPartial({})))}`)));
      expect(running.status?.containerStatuses[0]?.name).toBe('main');
      phase('pod running');
    } finally {
      c.close();
    }
  }, 900_000);
});
