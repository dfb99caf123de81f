// A GCE cell's view of its metadata server: the bootstrap user data in the "user-data"
// attribute, and the preemption notice of a Spot VM. Against the GCE fake of @cello/testkit
// (no GCE emulator exists): an instance inserted through its Compute REST API, then "booted",
// which starts that instance's metadata server.
import { CellNoticeKind, type CellNotice } from '@cello/proto/cell';
import { startGceFake, waitFor, type GceFake } from '@cello/testkit';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readUserData } from '../../src/bootstrap/user-data.js';
import { GceMetadataClient, readGceNotices, watchInstanceNotices } from '../../src/cloud/index.js';

let gce: GceFake;
beforeEach(async () => {
  gce = await startGceFake({ operationMs: 5 });
});
afterEach(async () => {
  await gce.stop();
});

const userData = {
  cello: 'cell-bootstrap/v1',
  controllerId: 'ctl',
  cellId: 'cell-gce1',
  agentPort: 9443,
  caCertPem: '-----BEGIN CERTIFICATE-----\nMIIBgce\n-----END CERTIFICATE-----\n',
  token: 'a-one-time-token-of-enough-length',
  tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
};

/** Inserts an instance through the fake's REST API and starts its metadata server. */
async function bootInstance(spot: boolean): Promise<{ id: string; url: string }> {
  const zone = gce.zones[0]!;
  const res = await fetch(`${gce.endpoint}/compute/v1/projects/${gce.project}/zones/${zone}/instances`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gce.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      name: 'cell-gce1',
      machineType: `zones/${zone}/machineTypes/e2-small`,
      disks: [{ boot: true, autoDelete: true, initializeParams: { sourceImage: 'projects/p/global/images/cell' } }],
      networkInterfaces: [{ network: 'global/networks/default' }],
      metadata: { items: [{ key: 'user-data', value: JSON.stringify(userData) }] },
      ...(spot ? { scheduling: { provisioningModel: 'SPOT', instanceTerminationAction: 'DELETE' } } : {}),
    }),
    signal: AbortSignal.timeout(5000),
  });
  expect(res.status).toBe(200);
  const id = `${zone}/cell-gce1`;
  return { id, url: await gce.bootMetadata(id) };
}

describe('GCE metadata (fake)', () => {
  it('reads the bootstrap from the user-data attribute, and refuses a request without Metadata-Flavor', async () => {
    const { url } = await bootInstance(false);
    const got = await readUserData({ gceMetadataUrl: url });
    expect(got).toMatchObject({ cellId: 'cell-gce1', token: userData.token, agentPort: 9443 });
    // The header is what keeps a redirected browser or an SSRF from reading it.
    const bare = await fetch(`${url}/computeMetadata/v1/instance/attributes/user-data`, { signal: AbortSignal.timeout(5000) });
    expect(bare.status).toBe(403);
    expect(await new GceMetadataClient(url).get('/computeMetadata/v1/instance/attributes/no-such')).toBeUndefined();
  });

  it('reports a preemption once, as a spot interruption, when instance/preempted turns TRUE', async () => {
    const { id, url } = await bootInstance(true);
    const client = new GceMetadataClient(url);
    expect(await readGceNotices(client)).toEqual([]);
    const got: CellNotice[] = [];
    const w = watchInstanceNotices({ gce: client, intervalMs: 20, onNotice: (n) => got.push(n) });
    try {
      gce.preempt(id);
      await waitFor('the preemption notice', () => got.length >= 1, { timeoutMs: 5000 });
      await new Promise((r) => setTimeout(r, 100)); // several more polls: still one notice
      expect(got).toHaveLength(1);
      expect(got[0]).toMatchObject({ kind: CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION, action: 'terminate' });
    } finally {
      await w.stop();
    }
  });

  it('refuses a watcher with both or neither metadata source', () => {
    expect(() => watchInstanceNotices({ onNotice: () => undefined })).toThrow(/exactly one/);
  });
});
