// Small state files written on the path to a running unit. ext4 (auto_da_alloc) flushes a
// file to disk when it replaces another by rename or is truncated to zero and rewritten; on a
// busy disk that costs milliseconds per file. These helpers avoid both.
import { closeSync, constants, ftruncateSync, openSync, readFileSync, unlinkSync, writeSync, writeFileSync } from 'node:fs';

/** Writes `data` unless the file already holds exactly it; replaces it by unlink + create. */
export function writeIfChanged(path: string, data: string, mode = 0o644): void {
  try {
    if (readFileSync(path, 'utf8') === data) return;
    unlinkSync(path);
  } catch {
    /* missing */
  }
  writeFileSync(path, data, { mode });
}

/**
 * Overwrites a small record in place (one write at offset 0, then truncation to its length),
 * never truncating it to zero first. A record under a page is written whole.
 */
export function overwriteRecord(path: string, data: string): void {
  const buf = Buffer.from(data);
  const w = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644); // no O_TRUNC
  try {
    writeSync(w, buf, 0, buf.length, 0);
    ftruncateSync(w, buf.length);
  } finally {
    closeSync(w);
  }
}
