// The local provider's cell network against the real kernel (root): cells' namespaces on the
// cello0 bridge as the provider makes them, an "outside" namespace the host routes to but that
// has no route back to the bridge (as the internet has none to a private bridge), and real TCP
// servers that answer with the address they see. Outbound NAT is what lets a cell reach it, per
// cell and switchable; pod to pod between cells is by address, never rewritten.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireCommand, waitFor } from '@cello/testkit';
import {
  allocateSlot,
  createCellNet,
  deleteCellNet,
  disableOutboundNat,
  enableOutboundNat,
  NAT_TABLE,
  netNames,
  releaseSlot,
  type CellNet,
} from '../../src/providers/local/netns.js';

const tag = String(process.pid % 100_000);
const OUTSIDE_NS = `cello-out-${tag}`;
const HOST_VETH = `cvo${tag}`;
const SUBNET = `10.205.${process.pid % 250}`;
const HOST_SIDE = `${SUBNET}.1`;
const OUTSIDE = `${SUBNET}.2`;
const PORT = 7070;

// Answers every connection with the address it came from.
const SERVER = `require('node:net').createServer((s) => s.end(s.remoteAddress)).listen(${PORT}, process.argv[1], () => console.log('ready'));`;
const CLIENT = `
const s = require('node:net').connect(${PORT}, process.argv[1]);
let data = '';
const t = setTimeout(() => { console.log('ERR:ETIMEDOUT'); process.exit(0); }, 1500);
s.on('data', (d) => (data += d));
s.on('end', () => { clearTimeout(t); console.log(data); });
s.on('error', (e) => { clearTimeout(t); console.log('ERR:' + e.code); });`;

const sh = (...args: string[]) => execFileSync(args[0]!, args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).toString();
const connect = (ns: string, host: string) => sh('ip', 'netns', 'exec', ns, process.execPath, '-e', CLIENT, host).trim();

const servers: ChildProcess[] = [];
async function serve(ns: string, address: string): Promise<void> {
  const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  servers.push(p);
  let ready = false;
  createInterface({ input: p.stdout! }).on('line', (l) => (ready ||= l === 'ready'));
  await waitFor(`a server on ${address}`, () => ready, { timeoutMs: 10_000 });
}

const cells: { id: string; slot: number; net: CellNet }[] = [];
async function cell(name: string, outboundNat: boolean): Promise<CellNet> {
  const id = `net-test-${name}-${tag}`;
  const slot = allocateSlot(netNames(id, 0).netns);
  const net = await createCellNet(id, slot, { outboundNat });
  cells.push({ id, slot, net });
  return net;
}

const natSet = () => sh('nft', 'list', 'set', ...NAT_TABLE.split(' '), 'cells');

beforeAll(() => {
  requireCommand('nft', 'nftables');
  requireCommand('ip', 'iproute2');
  try {
    sh('ip', 'netns', 'del', OUTSIDE_NS); // left by a killed run
  } catch {
    /* not there */
  }
  sh('ip', 'netns', 'add', OUTSIDE_NS);
  sh('ip', 'link', 'add', HOST_VETH, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', OUTSIDE_NS);
  sh('ip', 'addr', 'add', `${HOST_SIDE}/24`, 'dev', HOST_VETH);
  sh('ip', 'link', 'set', HOST_VETH, 'up');
  sh('ip', '-n', OUTSIDE_NS, 'addr', 'add', `${OUTSIDE}/24`, 'dev', 'eth0');
  sh('ip', '-n', OUTSIDE_NS, 'link', 'set', 'eth0', 'up');
  sh('ip', '-n', OUTSIDE_NS, 'link', 'set', 'lo', 'up');
});

afterAll(async () => {
  for (const s of servers) s.kill('SIGKILL');
  for (const c of cells) {
    await deleteCellNet(c.net);
    releaseSlot(c.slot, c.net.netns);
  }
  try {
    sh('ip', 'netns', 'del', OUTSIDE_NS); // takes the veth pair with it
  } catch {
    /* already gone */
  }
});

describe('local cells on cello0', () => {
  it('outbound NAT per cell, switchable: a cell with it reaches an outside address as the host; one without cannot; pod to pod keeps the pod IP', async () => {
    const a = await cell('a', true);
    const b = await cell('b', false);
    await serve(OUTSIDE_NS, OUTSIDE);
    await serve(b.netns, b.address);

    // The outside sees the host's own address on its link: masqueraded.
    expect(connect(a.netns, OUTSIDE)).toBe(HOST_SIDE);
    // Without NAT the outside has no way back to the bridge.
    expect(connect(b.netns, OUTSIDE)).toMatch(/^ERR:/);
    // Cell to cell across the bridge, by pod IP, with the sender's own address.
    expect(connect(a.netns, b.address)).toBe(a.address);
    expect(natSet()).toContain(a.address);
    expect(natSet()).not.toMatch(new RegExp(`\\b${b.address.replace(/\./g, '\\.')}\\b`));

    // Switched per cell, either way.
    await disableOutboundNat(a.address);
    await enableOutboundNat(b.address);
    expect(connect(a.netns, OUTSIDE)).toMatch(/^ERR:/);
    expect(connect(b.netns, OUTSIDE)).toBe(HOST_SIDE);

    // A deleted cell leaves no NAT behind for the next holder of its address.
    const [, cb] = cells;
    await deleteCellNet(cb!.net);
    expect(natSet()).not.toMatch(new RegExp(`\\b${b.address.replace(/\./g, '\\.')}\\b`));
  });
});
