// One unit's logs: every instance's stdout and stderr as CRI log files with size-based rotation
// (the previous instance stays readable), a byte-bounded in-memory ring of the newest records,
// and readers that tail, filter and follow.
//
// Why this shape:
// - The writer appends synchronously. A unit's output arrives on the event loop anyway, and a
//   synchronous append to the page cache is cheaper than queueing; it also means the file is
//   always exactly as long as `pos`, so a reader can snapshot a position and never race it.
// - Readers pull from the newest data in the ring, or from the files when they lag, and follow
//   by waiting for the writer's notification (push, no polling). A slow reader therefore never
//   holds the writer back; it only loses data when rotation deleted a file it had not reached,
//   and it is told how many bytes it skipped (LogChunk.droppedBytes).
// - Files are named `INSTANCE-SEGMENT.log` and never renamed, so a reader's notion of "the file
//   holding offset X" stays valid across rotation.
//
// Modules: container-logs.ts (a unit's instances, the entry point), instance.ts (one run: the
// writer, segment files, reads and tails), ring.ts (its newest records in memory), recovery.ts
// (files an earlier agent left), reader.ts (a LogsRequest served from one instance), chunk.ts
// (the LogChunk a read yields), render.ts (a chunk as a client prints it), cri.ts (the CRI
// record format and the packed form), clock.ts (nanosecond timestamps).
export { ContainerLogs } from './container-logs.js';
export { LogsError, type ContainerLogsOptions } from './options.js';
export type { ReadPiece } from './ring.js';
export { TextRenderer, unpackLogChunk } from './render.js';
