// The cello.io/aws-instance-profile annotation through the controller: the real reconciler and
// API with the embedded store and the aws provider on the EC2 emulator (moto). A pod whose
// namespace no rule of provider.instanceProfiles.allowed grants that profile is not scheduled,
// with the rule named in its condition and event, and no instance is launched for it; a pod
// the rule allows gets an instance carrying the profile. (The cells are never booted: what is
// checked here is the launch.) The API, given the provider's rule as the daemon gives it,
// refuses such a pod before it is stored.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, status as Status } from '@grpc/grpc-js';
import { DescribeInstancesCommand, EC2Client, type Instance } from '@aws-sdk/client-ec2';
import { ConditionStatus } from '@cello/proto/cell';
import { startMoto, waitFor, type MotoServer } from '@cello/testkit';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControllerApi } from '../../../src/api/server.js';
import { Events } from '../../../src/cells/schema.js';
import { toStatus } from '../../../src/errors.js';
import { AgentPool } from '../../../src/agents/pool.js';
import { Reconciler } from '../../../src/reconcile/reconciler.js';
import { silentLogger } from '../../../src/obs/logger.js';
import { AwsProvider, CELL_TAGS } from '../../../src/providers/aws/index.js';
import { openStore, type Store } from '../../../src/store/index.js';
import { makeWorld, type MotoWorld } from './moto-world.js';

const CA_PEM = '-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n';

let moto: MotoServer;
let world: MotoWorld;
let raw: EC2Client;
let store: Store;
let dir: string;
let provider: AwsProvider;
let rec: Reconciler;
let api: ControllerApi;

beforeAll(async () => {
  moto = await startMoto();
  world = await makeWorld(moto);
  raw = new EC2Client({ endpoint: moto.endpoint, region: moto.region, credentials: moto.credentials });
  dir = mkdtempSync(join(tmpdir(), 'cello-instance-profile-'));
  store = await openStore({ kind: 'embedded', dir });
  provider = new AwsProvider({
    config: world.config({ instanceTypes: ['t3.small'], instanceProfiles: { allowed: [{ namespaces: ['team-a'], profiles: [world.instanceProfile] }] } }),
    controllerId: 'ctl-ip',
    clientConfig: { credentials: moto.credentials },
    logger: pino({ level: 'silent' }),
  });
  const types = await provider.instanceTypes();
  // Never dialled: no cell boots in this test.
  const agents = new AgentPool({ forCell: () => credentials.createInsecure() });
  // No agent ever answers, so a bootstrap is never possible yet: without this the cell failed at
  // once (BootstrapUnavailable) and the pod was launched again, a second instance for the same
  // pod while the test waited for the first one's profile (the test failed 2 runs in 3 on a busy machine).
  const bootstrap = async () => {
    throw new Error('no agent in this test');
  };
  rec = new Reconciler({ store, provider, controllerId: 'ctl-ip', agents, log: silentLogger(), tickMs: 100, caCertPem: async () => CA_PEM, bootstrap });
  api = new ControllerApi({ store, agents, log: silentLogger(), controllerId: 'ctl-ip', providerName: provider.name, instanceTypes: types });
  await rec.start();
});

afterAll(async () => {
  await rec?.stop();
  await provider?.close();
  await store?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  raw?.destroy();
  await moto?.stop();
});

const pod = (namespace: string, name: string) => `apiVersion: v1
kind: Pod
metadata:
  name: ${name}
  namespace: ${namespace}
  annotations: { cello.io/aws-instance-profile: pod-role }
spec:
  containers: [{ name: main, image: example.invalid/app:1 }]
`;

async function instancesFor(ref: string): Promise<Instance[]> {
  const r = await raw.send(new DescribeInstancesCommand({ Filters: [{ Name: `tag:${CELL_TAGS.pod}`, Values: [ref] }] }));
  return (r.Reservations ?? []).flatMap((x) => x.Instances ?? []);
}

describe('cello.io/aws-instance-profile through the reconciler', () => {
  it('a namespace no rule allows: the pod is Unschedulable naming the rule, with a FailedScheduling event, and nothing is launched', async () => {
    await api.applyPod({ manifest: pod('default', 'thief'), namespace: '', dryRun: false });
    const p = await waitFor(
      'thief reported Unschedulable',
      async () => {
        const x = await api.getPod({ namespace: 'default', name: 'thief' });
        const c = x.status?.conditions.find((k) => k.type === 'PodScheduled');
        return c?.status === ConditionStatus.CONDITION_STATUS_FALSE ? x : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 100 },
    );
    const c = p.status!.conditions.find((k) => k.type === 'PodScheduled')!;
    expect(c.reason).toBe('Unschedulable');
    expect(c.message).toBe(
      'NotAllowed: annotation cello.io/aws-instance-profile: instance profile "pod-role" is not allowed in namespace "default": no rule of provider.instanceProfiles.allowed lists both',
    );
    expect(p.cellId).toBe('');
    const events = await new Events(store).list({ namespace: 'default', name: 'thief' }, 0);
    expect(events.map((e) => `${e.reason}: ${e.message}`)).toContainEqual(`FailedScheduling: ${c.message}`);
    expect(await instancesFor('default/thief')).toEqual([]);
  });

  it("through an API given the provider's rule (as the daemon builds it): refused with INVALID_ARGUMENT naming the rule, and not stored", async () => {
    const guarded = new ControllerApi({
      store,
      agents: new AgentPool({ forCell: () => credentials.createInsecure() }),
      log: silentLogger(),
      controllerId: 'ctl-ip',
      providerName: provider.name,
      instanceTypes: await provider.instanceTypes(),
      refusePod: provider.refusePod.bind(provider),
    });
    // The handlers are called in process: toStatus is what the gRPC edge answers with.
    const err = await guarded.applyPod({ manifest: pod('default', 'early'), namespace: '', dryRun: false }).then(() => undefined, toStatus);
    expect(err?.code).toBe(Status.INVALID_ARGUMENT);
    expect(err?.details).toBe(
      'annotation cello.io/aws-instance-profile: instance profile "pod-role" is not allowed in namespace "default": no rule of provider.instanceProfiles.allowed lists both',
    );
    expect(
      await guarded.getPod({ namespace: 'default', name: 'early' }).then(
        () => undefined,
        (e) => toStatus(e).code,
      ),
    ).toBe(Status.NOT_FOUND);
    // The namespace the rule names is stored as usual.
    await guarded.applyPod({ manifest: pod('team-a', 'allowed'), namespace: '', dryRun: false });
    expect((await guarded.getPod({ namespace: 'team-a', name: 'allowed' })).metadata?.name).toBe('allowed');
  });

  it("the namespace the rule names: the instance is launched with the pod's instance profile", async () => {
    await api.applyPod({ manifest: pod('team-a', 'worker'), namespace: '', dryRun: false });
    // moto tags the instance before it associates the profile: wait for both, bounded.
    let seen: Instance[] = [];
    await waitFor(
      'an instance for team-a/worker with its instance profile',
      async () => {
        seen = await instancesFor('team-a/worker');
        return seen.some((i) => (i.IamInstanceProfile?.Arn ?? '').endsWith(`/${world.instanceProfile}`));
      },
      { timeoutMs: 20_000, intervalMs: 200 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; instances: ${JSON.stringify(seen.map((i) => [i.InstanceId, i.IamInstanceProfile]))}`);
    });
    expect(seen).toHaveLength(1);
  });
});
