#!/usr/bin/env node
// Store write latency, embedded vs etcd: `node packages/controller/bench/store.mjs` after a build.
// Prints p50/p99 put latency one-at-a-time and with 64 concurrent writers, throughput, and for
// the embedded store how many writes each fsync carried (group commit). Not a test.
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEtcd } from '@cello/testkit';
import { EmbeddedStore, EtcdStore } from '../dist/store/index.js';

const value = { kind: 'Pod', status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] }, pad: 'x'.repeat(1500) };
const pct = (xs, p) => xs[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];
const ms = (x) => `${x.toFixed(2)} ms`;

async function run(name, store, { sequential = 500, concurrent = 4000, writers = 64 } = {}) {
  for (let i = 0; i < 50; i++) await store.put(`warm/${i}`, value);
  const seq = [];
  for (let i = 0; i < sequential; i++) {
    const t = performance.now();
    await store.put(`seq/${i}`, value);
    seq.push(performance.now() - t);
  }
  seq.sort((a, b) => a - b);
  const syncsBefore = store.stats?.syncs;
  const lat = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: writers }, async () => {
      while (next < concurrent) {
        const i = next++;
        const t = performance.now();
        await store.put(`conc/${i}`, value);
        lat.push(performance.now() - t);
      }
    }),
  );
  const elapsed = performance.now() - t0;
  lat.sort((a, b) => a - b);
  const perSync = syncsBefore === undefined ? '' : `, ${(concurrent / (store.stats.syncs - syncsBefore)).toFixed(1)} writes per fsync`;
  console.log(`${name}: sequential put p50 ${ms(pct(seq, 50))} p99 ${ms(pct(seq, 99))} (${(sequential / (seq.reduce((a, b) => a + b, 0) / 1000)).toFixed(0)} puts/s)`);
  console.log(`${name}: ${writers} concurrent writers put p50 ${ms(pct(lat, 50))} p99 ${ms(pct(lat, 99))}, ${(concurrent / (elapsed / 1000)).toFixed(0)} puts/s${perSync}`);
}

const dir = await fs.mkdtemp(join(tmpdir(), 'cello-bench-store-'));
try {
  const s = await EmbeddedStore.open({ dir });
  await run('embedded', s);
  await s.close();
} finally {
  await fs.rm(dir, { recursive: true, force: true });
}
const etcd = await startEtcd();
try {
  const s = await EtcdStore.open({ endpoints: etcd.endpoints });
  await run('etcd', s);
  await s.close();
} finally {
  await etcd.stop();
}
