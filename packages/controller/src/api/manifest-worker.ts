// Runs in a worker thread (see manifest-parser.ts): parses one manifest per message and posts
// the result back. Structured clone carries the proto objects (plain data, Dates, Uint8Arrays).
import { parentPort } from 'node:worker_threads';
import { ManifestError, podFromManifest } from '@cello/proto';
import type { ParseReply, ParseRequest } from './manifest-parser.js';

parentPort!.on('message', (m: ParseRequest) => {
  let reply: ParseReply;
  try {
    reply = { id: m.id, ok: podFromManifest(m.text, { namespace: m.namespace }) };
  } catch (err) {
    reply =
      err instanceof ManifestError
        ? { id: m.id, manifestError: { field: err.field, problem: err.problem, document: err.document } }
        : { id: m.id, error: err instanceof Error ? err.message : String(err) };
  }
  parentPort!.postMessage(reply);
});
