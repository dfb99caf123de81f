#!/usr/bin/env node
// npm run bench:services-propagation — an endpoint change reaching every cell: the controller's
// real Services table and SyncServices feed, streaming over loopback gRPC to CELLS agents that run
// the agent's real SyncServices handler and Services state, with a SIMULATED Service proxy (it
// does not run nft: bench:services measures that part, per cell, on its own).
//   1. the first snapshot (S Services x E endpoints) reaching every cell;
//   2. one endpoint change -> acknowledged by every cell, p50/p99 over CHANGES changes.
// Goal (issue 15): p99 < 1 s with 100 cells. Needs the built controller and cell-agent.
import { performance } from 'node:perf_hooks';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import pino from 'pino';
import { CellAgentService } from '@cello/proto/cell';

const controller = new URL('../../packages/controller/dist/', import.meta.url);
const agent = new URL('../../packages/cell-agent/dist/', import.meta.url);
const { ClusterServices } = await import(new URL('services/cluster-services.js', controller).href);
const { ServiceFeed } = await import(new URL('services/feed.js', controller).href);
const { AgentPool, insecureAgentCredentials } = await import(new URL('agents/pool.js', controller).href);
const { createSyncServices } = await import(new URL('server/services.js', agent).href);

const CELLS = Number(process.env.BENCH_CELLS ?? 100);
const SERVICES = Number(process.env.BENCH_SERVICES ?? 1000);
const ENDPOINTS = Number(process.env.BENCH_ENDPOINTS ?? 3);
const CHANGES = Number(process.env.BENCH_CHANGES ?? 100);
const log = pino({ level: 'silent' });

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const ms = (x) => `${x.toFixed(1)} ms`;

function slice(i, shift = 0) {
  const endpoints = [];
  for (let e = 0; e < ENDPOINTS; e++) endpoints.push({ addresses: [`10.${100 + (i >> 8)}.${i & 255}.${e + 1 + shift}`], ready: true, serving: true, terminating: false });
  return { namespace: 'bench', name: `s${i}-x`, service: `s${i}`, ports: [{ name: 'http', protocol: 1, port: 8080 }], endpoints };
}

// The simulated cells: the agent's SyncServices handler and state, a proxy that applies nothing.
const simulatedProxy = { sync: async () => {} };
const servers = [];
for (let c = 0; c < CELLS; c++) {
  const server = new Server();
  server.addService(CellAgentService, { syncServices: createSyncServices({ proxy: () => simulatedProxy, logger: log }) });
  const port = await new Promise((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  servers.push({ server, id: `cell-${c}`, address: `127.0.0.1:${port}` });
}

const services = new ClusterServices();
for (let i = 0; i < SERVICES; i++) {
  services.setService(`bench/s${i}`, {
    namespace: 'bench',
    name: `s${i}`,
    clusterIps: [`10.96.${i >> 8}.${i & 255}`],
    externalIps: [],
    ports: [{ name: 'http', protocol: 1, port: 80, nodePort: 0 }],
    sessionAffinityTimeoutSeconds: 0,
    externalTrafficPolicy: 'Cluster',
    internalTrafficPolicy: 'Cluster',
  });
  services.setSlice(`bench/s${i}-x`, slice(i));
}
services.markSynced();

const pool = new AgentPool(insecureAgentCredentials);
const feed = new ServiceFeed({ services, agents: pool, log });
const allAcked = (deadlineMs) =>
  new Promise((resolve, reject) => {
    const until = Date.now() + deadlineMs;
    const check = () => {
      if (servers.every((s) => feed.acked(s.id) === services.version)) return resolve();
      if (Date.now() > until) return reject(new Error(`not every cell acknowledged version ${services.version} within ${deadlineMs} ms`));
      setImmediate(check);
    };
    check();
  });

try {
  let t = performance.now();
  for (const s of servers) feed.start(s.id, s.address);
  await allAcked(60_000);
  console.log(`first snapshot (${SERVICES} Services x ${ENDPOINTS} endpoints) acknowledged by ${CELLS} cells: ${ms(performance.now() - t)}`);

  const took = [];
  for (let c = 0; c < CHANGES; c++) {
    t = performance.now();
    services.setSlice(`bench/s${c % SERVICES}-x`, slice(c % SERVICES, c + 1));
    await allAcked(30_000);
    took.push(performance.now() - t);
  }
  console.log(
    `one endpoint change -> acknowledged by all ${CELLS} cells (simulated proxies): p50 ${ms(pct(took, 50))}, p99 ${ms(pct(took, 99))} over ${CHANGES} changes (goal p99 < 1 s)`,
  );
} finally {
  feed.close();
  pool.closeAll();
  await Promise.all(servers.map((s) => new Promise((r) => s.server.tryShutdown(r))));
}
