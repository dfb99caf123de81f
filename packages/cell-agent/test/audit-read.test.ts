// Reading the audit log for ListAudit is bounded: a log that grew for months (here: 1 GiB of
// older, sparse history, longer than Node can even hold as a string) still lists its newest
// sessions, and transcripts fit one gRPC message.
import { appendFileSync, mkdtempSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AUDIT_LIST_MAX_RECORDS, AUDIT_TRANSCRIPTS_MAX_BYTES, AuditLog } from '../src/audit/index.js';

describe('audit log reads', () => {
  it('lists the newest sessions of a log too large to read whole', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cello-audit-read-'));
    const file = join(dir, 'audit.jsonl');
    writeFileSync(file, '');
    truncateSync(file, 1 << 30);
    appendFileSync(file, '\n');
    const log = new AuditLog(dir);
    for (let i = 0; i < 5; i++)
      log.begin({ kind: 'exec', container: 'c', command: ['echo', String(i)], tty: false, stdin: false, peer: 'p' }).end({ exitCode: 0, signal: '', message: '' });
    const got = log.list(3, false);
    expect(got.map((r) => r.command[1])).toEqual(['4', '3', '2']);
    expect(log.list(1_000_000, false)).toHaveLength(5);
  });

  it('bounds the records and the transcripts of one answer', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cello-audit-read-'));
    const log = new AuditLog(dir, { recordTranscripts: true, maxTranscriptBytes: 1 << 20 });
    for (let i = 0; i < 6; i++) {
      const s = log.begin({ kind: 'exec', container: 'c', command: ['cat'], tty: false, stdin: true, peer: 'p' });
      s.output(Buffer.alloc(1 << 20, 0x61));
      s.end({ exitCode: 0, signal: '', message: '' });
    }
    const got = log.list(100, true);
    expect(got).toHaveLength(6);
    const total = got.reduce((n, r) => n + r.transcript.length, 0);
    expect(total).toBe(AUDIT_TRANSCRIPTS_MAX_BYTES);
    expect(got[0]!.transcript.length).toBe(1 << 20); // newest first get theirs whole
    for (let i = 0; i < AUDIT_LIST_MAX_RECORDS + 5; i++) log.append({ id: `x${i}`, phase: 'start', kind: 'exec' });
    expect(log.list(5000, false)).toHaveLength(AUDIT_LIST_MAX_RECORDS);
  });
});
