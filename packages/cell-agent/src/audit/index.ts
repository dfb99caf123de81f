// The audit log of exec and attach sessions: who ran what in which unit, when, with what result
// and how many bytes each way; optionally the transcript. Append-only JSON lines, one record when
// a session starts and one when it ends (so a session cut short by an agent crash still shows),
// merged by id when read.
import { randomUUID } from 'node:crypto';
import { appendFileSync, mkdirSync, openSync, closeSync, writeSync, existsSync, constants, fstatSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { AuditRecord, type ExitStatus } from '@cello/proto/cell';

export interface AuditStart {
  kind: 'exec' | 'attach';
  container: string;
  command: string[];
  tty: boolean;
  stdin: boolean;
  /** The transport identity of the caller (the controller's certificate). */
  peer: string;
  /**
   * Who the controller says asked (ExecStart.requested_by): trusted only because only the
   * controller can call the agent; empty when a caller did not say.
   */
  user?: string;
}

interface StoredRecord {
  id: string;
  phase: 'start' | 'end';
  kind?: string;
  container?: string;
  command?: string[];
  tty?: boolean;
  stdin?: boolean;
  peer?: string;
  user?: string;
  startedAt?: string;
  finishedAt?: string;
  exit?: ExitStatus;
  bytesIn?: number;
  bytesOut?: number;
  transcript?: string; // file name under transcripts/
  transcriptTruncated?: boolean;
}

/** One session being recorded. */
export class AuditSession {
  bytesIn = 0;
  bytesOut = 0;
  private fd: number | undefined;
  private transcriptBytes = 0;
  private truncated = false;
  private ended = false;

  constructor(
    private readonly log: AuditLog,
    readonly id: string,
    transcriptPath: string | undefined,
    private readonly maxTranscript: number,
  ) {
    if (transcriptPath !== undefined) this.fd = openSync(transcriptPath, 'w', 0o600);
  }

  /** Bytes from the client to the process. */
  input(data: Buffer): void {
    this.bytesIn += data.length;
    this.record(data);
  }

  /** Bytes from the process to the client. */
  output(data: Buffer): void {
    this.bytesOut += data.length;
    this.record(data);
  }

  private record(data: Buffer): void {
    if (this.fd === undefined) return;
    const room = this.maxTranscript - this.transcriptBytes;
    if (room <= 0) {
      this.truncated = true;
      return;
    }
    const piece = data.length > room ? data.subarray(0, room) : data;
    if (piece.length < data.length) this.truncated = true;
    writeSync(this.fd, piece);
    this.transcriptBytes += piece.length;
  }

  end(exit: ExitStatus): void {
    if (this.ended) return;
    this.ended = true;
    if (this.fd !== undefined) closeSync(this.fd);
    this.log.append({
      id: this.id,
      phase: 'end',
      finishedAt: new Date().toISOString(),
      exit,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      transcriptTruncated: this.truncated || undefined,
    });
  }
}

export class AuditLog {
  private readonly file: string;
  private readonly transcripts: string;

  constructor(
    dir: string,
    private readonly opts: { recordTranscripts?: boolean; maxTranscriptBytes?: number } = {},
  ) {
    this.file = join(dir, 'audit.jsonl');
    this.transcripts = join(dir, 'transcripts');
    mkdirSync(this.transcripts, { recursive: true, mode: 0o700 });
  }

  begin(s: AuditStart): AuditSession {
    const id = randomUUID();
    const transcript = this.opts.recordTranscripts ? `${id}.bin` : undefined;
    this.append({ id, phase: 'start', ...s, startedAt: new Date().toISOString(), transcript });
    return new AuditSession(this, id, transcript === undefined ? undefined : join(this.transcripts, transcript), this.opts.maxTranscriptBytes ?? 1024 * 1024);
  }

  append(r: StoredRecord): void {
    appendFileSync(this.file, `${JSON.stringify(r)}\n`, { mode: 0o600 });
  }

  /**
   * Newest first: at most AUDIT_LIST_MAX_RECORDS, from the last AUDIT_READ_MAX_BYTES of the log
   * (older sessions are not listed), with transcripts up to AUDIT_TRANSCRIPTS_MAX_BYTES in all
   * (later records' transcripts come back empty): the log grows for the cell's whole life, and
   * one response has to fit a gRPC message.
   */
  list(limit: number, includeTranscript: boolean): AuditRecord[] {
    if (!existsSync(this.file)) return [];
    limit = Math.min(limit, AUDIT_LIST_MAX_RECORDS);
    let transcriptBudget = AUDIT_TRANSCRIPTS_MAX_BYTES;
    const byId = new Map<string, StoredRecord>();
    const order: string[] = [];
    for (const line of readTail(this.file, AUDIT_READ_MAX_BYTES).split('\n')) {
      if (!line) continue;
      let r: StoredRecord;
      try {
        r = JSON.parse(line) as StoredRecord;
      } catch {
        continue; // a torn last line after a crash
      }
      const prev = byId.get(r.id);
      if (prev === undefined) order.push(r.id);
      byId.set(r.id, { ...prev, ...r });
    }
    return order
      .reverse()
      .slice(0, limit)
      .map((id) => {
        const r = byId.get(id)!;
        let transcript: Buffer = Buffer.alloc(0);
        if (includeTranscript && r.transcript && transcriptBudget > 0) {
          transcript = readBounded(join(this.transcripts, r.transcript), transcriptBudget);
          transcriptBudget -= transcript.length;
        }
        return AuditRecord.fromPartial({
          id: r.id,
          kind: r.kind ?? '',
          container: r.container ?? '',
          command: r.command ?? [],
          tty: r.tty ?? false,
          stdin: r.stdin ?? false,
          startedAt: r.startedAt ? new Date(r.startedAt) : undefined,
          finishedAt: r.finishedAt ? new Date(r.finishedAt) : undefined,
          exit: r.exit,
          bytesIn: r.bytesIn ?? 0,
          bytesOut: r.bytesOut ?? 0,
          peer: r.peer ?? '',
          user: r.user ?? '',
          transcript,
        });
      });
  }
}

export const AUDIT_LIST_MAX_RECORDS = 1000;
export const AUDIT_READ_MAX_BYTES = 8 * 1024 * 1024;
export const AUDIT_TRANSCRIPTS_MAX_BYTES = 3 * 1024 * 1024;

/** The last `max` bytes of a file, from the first whole line among them. */
function readTail(file: string, max: number): string {
  const fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const size = fstatSync(fd).size;
    const start = Math.max(0, size - max);
    const buf = Buffer.alloc(size - start);
    let n = 0;
    while (n < buf.length) {
      const r = readSync(fd, buf, n, buf.length - n, start + n);
      if (r === 0) break;
      n += r;
    }
    let text = buf.subarray(0, n);
    if (start > 0) text = text.subarray(text.indexOf(10) + 1); // a cut first line is dropped
    return text.toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Up to `max` bytes of a transcript; empty when it was removed. */
function readBounded(file: string, max: number): Buffer {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return Buffer.alloc(0);
  }
  try {
    const buf = Buffer.alloc(Math.min(max, fstatSync(fd).size));
    let n = 0;
    while (n < buf.length) {
      const r = readSync(fd, buf, n, buf.length - n, n);
      if (r === 0) break;
      n += r;
    }
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}
