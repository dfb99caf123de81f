// Per-cell networking for the local provider (root only): one network namespace per cell with
// a veth pair whose host end sits on the `cello0` bridge, so every cell has its own address and
// pods on different cells can listen on the same port without colliding.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const BRIDGE = 'cello0';
const BRIDGE_CIDR = '10.88.0.1/16';
const BRIDGE_NET = '10.88.0.0/16';

async function ip(...args: string[]): Promise<string> {
  const { stdout } = await run('ip', args, { timeout: 10_000 });
  return stdout;
}

async function ensureBridge(): Promise<void> {
  try {
    await ip('link', 'show', BRIDGE);
  } catch {
    try {
      await ip('link', 'add', BRIDGE, 'type', 'bridge');
    } catch (err) {
      // Another launch raced us to it.
      if (!String((err as Error).message).includes('File exists')) throw err;
    }
  }
  const addrs = await ip('-o', '-4', 'addr', 'show', 'dev', BRIDGE);
  if (!addrs.includes(BRIDGE_CIDR.split('/')[0]!)) {
    await ip('addr', 'add', BRIDGE_CIDR, 'dev', BRIDGE).catch((err: Error) => {
      if (!err.message.includes('File exists')) throw err;
    });
  }
  await ip('link', 'set', BRIDGE, 'up');
}

export interface CellNet {
  netns: string;
  /** /run/netns/NAME, for the agent's --pod-netns. */
  path: string;
  hostVeth: string;
  address: string;
}

/** The address for cell slot n (1..65000) on the bridge's /16. */
function addressFor(slot: number): string {
  const n = slot + 1; // .0.1 is the bridge
  return `10.88.${Math.floor(n / 256)}.${n % 256}`;
}

// Addresses on the bridge are shared by every controller on this machine (tests, `npm start`),
// so they are leased host-wide: one file per address, created with O_EXCL, naming the netns
// that holds it. A lease whose netns is gone (a crashed controller) is taken over.
const IPAM_DIR = process.env.CELLO_IPAM_DIR ?? '/run/cello/ipam';
const MAX_SLOT = 65000;
const STALE_MS = 60_000;

function leaseStale(path: string): boolean {
  try {
    const owner = readFileSync(path, 'utf8').trim();
    if (owner && existsSync(`/run/netns/${owner}`)) return false;
    return Date.now() - statSync(path).mtimeMs > STALE_MS;
  } catch {
    return false;
  }
}

/** Leases the lowest free address slot for `netns`, atomically across processes. */
export function allocateSlot(netns: string): number {
  mkdirSync(IPAM_DIR, { recursive: true });
  const taken = new Set(readdirSync(IPAM_DIR).map(Number).filter(Number.isInteger));
  for (let slot = 1; slot <= MAX_SLOT; slot++) {
    const path = join(IPAM_DIR, String(slot));
    if (taken.has(slot)) {
      if (!leaseStale(path)) continue;
      rmSync(path, { force: true });
    }
    let fd: number;
    try {
      fd = openSync(path, 'wx', 0o644);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') continue; // another process won it
      throw err;
    }
    writeSync(fd, netns);
    closeSync(fd);
    return slot;
  }
  throw new Error(`no free address on ${BRIDGE}: all ${MAX_SLOT} leases in ${IPAM_DIR} are held`);
}

/** Ends the lease, if `netns` still holds it. */
export function releaseSlot(slot: number, netns: string): void {
  const path = join(IPAM_DIR, String(slot));
  try {
    if (readFileSync(path, 'utf8').trim() === netns) rmSync(path, { force: true });
  } catch {
    /* already gone */
  }
}

export function netNames(cellId: string, slot: number): { netns: string; hostVeth: string; address: string } {
  // Interface names are limited to 15 bytes: a hash of the cell ID keeps them short and unique.
  const short = createHash('sha256').update(cellId).digest('hex').slice(0, 10);
  return { netns: `cello-${short}`, hostVeth: `cv${short}`, address: addressFor(slot) };
}

// Outbound NAT for cells on the bridge: one host table shared by every controller on the
// machine, masquerading traffic from the cell addresses in its set to anything off the bridge.
// Membership is per cell, so one controller's setting never changes another's cells; traffic
// between cells (pod to pod, by address) and to the host itself is never rewritten.
export const NAT_TABLE = 'ip cello-cells';
const NAT_SET = 'cells';

function nft(input: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = execFile('nft', ['-f', '-'], { timeout: 10_000 }, (err, _out, stderr) =>
      err ? reject(new Error(`nft: ${stderr.trim() || err.message}${(err as NodeJS.ErrnoException).code === 'ENOENT' ? ' (install nftables)' : ''}`)) : resolve(),
    );
    child.stdin?.end(input);
  });
}

/** Masquerades `address`'s traffic off the bridge, and turns on the host's IPv4 forwarding. */
export async function enableOutboundNat(address: string): Promise<void> {
  const t = NAT_TABLE;
  await nft(
    [
      `add table ${t}`,
      `add set ${t} ${NAT_SET} { type ipv4_addr ; }`,
      `add chain ${t} postrouting { type nat hook postrouting priority srcnat ; policy accept ; }`,
      // Flushed and written again in the same transaction: concurrent launches leave one rule.
      `flush chain ${t} postrouting`,
      `add rule ${t} postrouting ip saddr @${NAT_SET} ip daddr != ${BRIDGE_NET} masquerade`,
      `add element ${t} ${NAT_SET} { ${address} }`,
    ].join('\n') + '\n',
  );
  await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n');
}

/** Stops masquerading `address` (nothing to do when it never was, or there is no table). */
export async function disableOutboundNat(address: string): Promise<void> {
  await nft(`delete element ${NAT_TABLE} ${NAT_SET} { ${address} }\n`).catch((err: Error) => {
    if (!/No such file or directory|does not exist|not installed|ENOENT/.test(err.message)) throw err;
  });
}

export async function createCellNet(cellId: string, slot: number, o: { outboundNat?: boolean } = {}): Promise<CellNet> {
  await ensureBridge();
  const { netns, hostVeth, address } = netNames(cellId, slot);
  const peer = `${hostVeth}p`;
  await ip('netns', 'add', netns);
  try {
    await ip('link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', peer);
    await ip('link', 'set', peer, 'netns', netns);
    await ip('link', 'set', hostVeth, 'master', BRIDGE);
    await ip('link', 'set', hostVeth, 'up');
    await ip('-n', netns, 'link', 'set', 'lo', 'up');
    await ip('-n', netns, 'link', 'set', peer, 'name', 'eth0');
    await ip('-n', netns, 'addr', 'add', `${address}/16`, 'dev', 'eth0');
    await ip('-n', netns, 'link', 'set', 'eth0', 'up');
    await ip('-n', netns, 'route', 'add', 'default', 'via', BRIDGE_CIDR.split('/')[0]!);
    // Set either way: a lease taken over from a crashed controller may still be in the set.
    if (o.outboundNat) await enableOutboundNat(address);
    else await disableOutboundNat(address);
  } catch (err) {
    await deleteCellNet({ netns, hostVeth, address });
    throw err;
  }
  return { netns, path: `/run/netns/${netns}`, hostVeth, address };
}

export async function deleteCellNet(n: { netns: string; hostVeth: string; address?: string }): Promise<void> {
  // The address goes to the next cell: it must not inherit this one's NAT.
  if (n.address) await disableOutboundNat(n.address);
  // Deleting the namespace destroys the veth end inside it, and with it the host end.
  await ip('link', 'del', n.hostVeth).catch(() => undefined);
  if (existsSync(`/run/netns/${n.netns}`)) await ip('netns', 'del', n.netns).catch(() => undefined);
}
