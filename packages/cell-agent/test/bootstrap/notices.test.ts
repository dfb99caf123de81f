// Spot interruption, rebalance and maintenance notices read from instance metadata (IMDSv2),
// against the IMDS test double (amazon-ec2-metadata-mock is not installable here).
import { CellNoticeKind, type CellNotice } from '@cello/proto/cell';
import { startImdsTestDouble, waitFor, type ImdsTestDouble } from '@cello/testkit';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ImdsClient, readNotices, watchInstanceNotices } from '../../src/cloud/index.js';

let imds: ImdsTestDouble;
beforeEach(async () => {
  imds = await startImdsTestDouble();
});
afterEach(async () => {
  await imds.stop();
});

describe('instance notices', () => {
  it('reports nothing while metadata has no notice', async () => {
    expect(await readNotices(new ImdsClient(imds.url))).toEqual([]);
    expect(imds.unauthorized).toBe(0);
  });

  it('reports a spot interruption and a rebalance recommendation once each, as they appear', async () => {
    const got: CellNotice[] = [];
    const w = watchInstanceNotices({ imds: new ImdsClient(imds.url), intervalMs: 25, onNotice: (n) => got.push(n) });
    try {
      imds.set('/latest/meta-data/events/recommendations/rebalance', JSON.stringify({ noticeTime: '2026-11-22T02:00:00Z' }));
      await waitFor('the rebalance notice', () => got.length >= 1, { timeoutMs: 5000 });
      expect(got[0]).toMatchObject({ kind: CellNoticeKind.CELL_NOTICE_KIND_REBALANCE_RECOMMENDATION });
      expect(got[0]!.detail).toContain('2026-11-22T02:00:00Z');

      const at = new Date(Date.now() + 120_000);
      imds.set('/latest/meta-data/spot/instance-action', JSON.stringify({ action: 'terminate', time: at.toISOString().replace(/\.\d+Z$/, 'Z') }));
      await waitFor('the spot interruption notice', () => got.length >= 2, { timeoutMs: 5000 });
      const spot = got[1]!;
      expect(spot.kind).toBe(CellNoticeKind.CELL_NOTICE_KIND_SPOT_INTERRUPTION);
      expect(spot.action).toBe('terminate');
      expect(Math.abs(spot.actionAt!.getTime() - at.getTime())).toBeLessThan(1000);

      // Several more polls: no duplicates.
      const polls = imds.tokensIssued;
      await new Promise((r) => setTimeout(r, 150));
      expect(got).toHaveLength(2);
      expect(imds.tokensIssued).toBe(polls); // the session token is reused between polls
    } finally {
      await w.stop();
    }
  });

  it('reports scheduled maintenance that is not completed or cancelled', async () => {
    imds.set(
      '/latest/meta-data/events/maintenance/scheduled',
      JSON.stringify([
        { Code: 'system-reboot', Description: 'scheduled reboot', NotBefore: '21 Jan 2027 09:00:43 GMT', State: 'active' },
        { Code: 'instance-stop', Description: 'old', NotBefore: '1 Jan 2026 09:00:00 GMT', State: 'completed' },
      ]),
    );
    const n = await readNotices(new ImdsClient(imds.url));
    expect(n).toHaveLength(1);
    expect(n[0]).toMatchObject({ kind: CellNoticeKind.CELL_NOTICE_KIND_SCHEDULED_MAINTENANCE, action: 'system-reboot', detail: 'scheduled reboot' });
    expect(n[0]!.actionAt?.toISOString()).toBe('2027-01-21T09:00:43.000Z');
  });

  it('keeps watching through metadata errors and reports them', async () => {
    imds.set('/latest/meta-data/spot/instance-action', '{not json');
    const errors: unknown[] = [];
    const got: CellNotice[] = [];
    const w = watchInstanceNotices({ imds: new ImdsClient(imds.url), intervalMs: 25, onNotice: (n) => got.push(n), onError: (e) => errors.push(e) });
    try {
      await waitFor('an error report', () => errors.length >= 1, { timeoutMs: 5000 });
      imds.set('/latest/meta-data/spot/instance-action', JSON.stringify({ action: 'stop', time: '2027-01-01T00:00:00Z' }));
      await waitFor('the notice after the error', () => got.length >= 1, { timeoutMs: 5000 });
      expect(got[0]!.action).toBe('stop');
    } finally {
      await w.stop();
    }
  });
});
