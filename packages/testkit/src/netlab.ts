// A small network for Service tests (root only): a "cell" namespace, whose pod sends traffic
// to cluster IPs, joined by a veth pair to a "backends" namespace that holds every endpoint's
// address, with real TCP and UDP servers on each. Each server answers with the address and
// port that received the connection, so a test sees which endpoint served it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { requireCommand } from './registry.js';
import { waitFor } from './wait.js';

export interface NetLab {
  /** Namespace names (under /run/netns). */
  cell: string;
  backends: string;
  /** The cell's address (the pod IP). */
  cellAddress: string;
  /** Endpoint addresses in the backends namespace: TCP 8080 and 8081, UDP 5353 on each. */
  backendAddresses: string[];
  /** With `subnet6`: the cell's IPv6 address and the backends' (served like the IPv4 ones); else empty. */
  cellAddress6: string | undefined;
  backendAddresses6: string[];
  /**
   * Connects `count` times to host:port from namespace `ns`, one after another; each answer is
   * what the server said, or 'ERR:<code>' (ECONNREFUSED, ETIMEDOUT after `timeoutMs`).
   */
  connect(ns: string, proto: 'tcp' | 'udp', host: string, port: number, count: number, timeoutMs?: number): string[];
  /** Runs a command in a namespace (e.g. `nft list ruleset`). */
  exec(ns: string, ...cmd: string[]): string;
  stop(): Promise<void>;
}

const SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
const addrs = JSON.parse(process.argv[1]);
let n = 0; const total = addrs.length * 3;
const up = () => { if (++n === total) console.log('ready'); };
for (const a of addrs) {
  for (const port of [8080, 8081]) net.createServer((s) => s.end(a + ':' + port)).listen(port, a, up);
  const u = dgram.createSocket(a.includes(':') ? 'udp6' : 'udp4');
  u.on('message', (m, r) => u.send(a + ':5353', r.port, r.address));
  u.bind(5353, a, up);
}`;

const CLIENT = `
const net = require('node:net'), dgram = require('node:dgram');
const [proto, host, port, count, timeout] = process.argv.slice(1);
const one = () => new Promise((resolve) => {
  let s;
  const done = (v) => { clearTimeout(t); resolve(v); };
  const t = setTimeout(() => { if (proto === 'udp') s.close(); else s.destroy(); done('ERR:ETIMEDOUT'); }, Number(timeout));
  if (proto === 'udp') {
    s = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
    s.on('message', (m) => { s.close(); done(m.toString()); });
    s.on('error', (e) => { s.close(); done('ERR:' + e.code); });
    s.send('?', Number(port), host);
  } else {
    let data = '';
    s = net.connect(Number(port), host);
    s.on('data', (d) => (data += d));
    s.on('end', () => done(data));
    s.on('error', (e) => done('ERR:' + e.code));
  }
});
(async () => { const out = []; for (let i = 0; i < Number(count); i++) out.push(await one()); console.log(JSON.stringify(out)); })();`;

/**
 * `subnet`: the first three octets of a /24 no other lab on this machine uses (e.g. '10.201.0').
 * `subnet6`: a /64 prefix no other lab uses (e.g. 'fd00:201::'), for dual-stack tests: the cell
 * gets `<subnet6>1`, the backends `<subnet6>2` to `4`, beside their IPv4 addresses.
 */
export async function startNetLab(name: string, subnet: string, subnet6?: string): Promise<NetLab> {
  requireCommand('ip', 'iproute2');
  const cell = `cello-lab-${name}-c`;
  const backends = `cello-lab-${name}-b`;
  const cellAddress = `${subnet}.1`;
  const backendAddresses = [2, 3, 4].map((n) => `${subnet}.${n}`);
  const cellAddress6 = subnet6 === undefined ? undefined : `${subnet6}1`;
  const backendAddresses6 = subnet6 === undefined ? [] : [2, 3, 4].map((n) => `${subnet6}${n}`);
  const sh = (...args: string[]) => execFileSync(args[0]!, args.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 }).toString();
  const exec = (ns: string, ...cmd: string[]) => sh('ip', 'netns', 'exec', ns, ...cmd);
  const del = () => {
    for (const ns of [cell, backends]) {
      try {
        sh('ip', 'netns', 'del', ns);
      } catch {
        /* not there */
      }
    }
  };
  del(); // left by a killed run
  let server: ChildProcess | undefined;
  try {
    for (const ns of [cell, backends]) {
      sh('ip', 'netns', 'add', ns);
      exec(ns, 'ip', 'link', 'set', 'lo', 'up');
      // A new namespace inherits the host's IPv4 forwarding (net.core.devconf_inherit_init_net
      // 0), which a host running local cells with outbound NAT has on. The lab's namespaces start
      // as plain hosts, whatever the host: the backends must drop, not answer "unreachable" for,
      // addresses they do not hold; the cell's Service proxy turns forwarding on itself.
      exec(ns, 'sysctl', '-qw', 'net.ipv4.ip_forward=0');
    }
    sh('ip', 'link', 'add', 'lab0', 'netns', cell, 'type', 'veth', 'peer', 'name', 'lab1', 'netns', backends);
    exec(cell, 'ip', 'addr', 'add', `${cellAddress}/24`, 'dev', 'lab0');
    exec(cell, 'ip', 'link', 'set', 'lab0', 'up');
    // Cluster IPs are routed like any address off the cell: through its default route.
    exec(cell, 'ip', 'route', 'add', 'default', 'via', backendAddresses[0]!);
    // The backends are hosts, not routers: a packet for an address nobody serves (a deleted
    // Service's cluster IP) is dropped, whatever forwarding setting a new namespace inherits
    // from the host (IPv4 copies init_net's: a host with ip_forward=1 turned the drop into an
    // ICMP net-unreachable, and the tests' timeouts into ENETUNREACH).
    exec(backends, 'sysctl', '-qw', 'net.ipv4.ip_forward=0');
    for (const a of backendAddresses) exec(backends, 'ip', 'addr', 'add', `${a}/24`, 'dev', 'lab1');
    exec(backends, 'ip', 'link', 'set', 'lab1', 'up');
    if (cellAddress6 !== undefined) {
      // nodad: usable at once, not after duplicate address detection's second or so.
      exec(cell, 'ip', '-6', 'addr', 'add', `${cellAddress6}/64`, 'dev', 'lab0', 'nodad');
      exec(cell, 'ip', '-6', 'route', 'add', 'default', 'via', backendAddresses6[0]!);
      exec(backends, 'sysctl', '-qw', 'net.ipv6.conf.all.forwarding=0');
      for (const a of backendAddresses6) exec(backends, 'ip', '-6', 'addr', 'add', `${a}/64`, 'dev', 'lab1', 'nodad');
    }
    const served = [...backendAddresses, ...backendAddresses6];
    server = spawn('ip', ['netns', 'exec', backends, process.execPath, '-e', SERVER, JSON.stringify(served)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let ready = false;
    createInterface({ input: server.stdout! }).on('line', (l) => (ready ||= l === 'ready'));
    await waitFor('the lab servers listening', () => ready);
  } catch (err) {
    server?.kill('SIGKILL');
    del();
    throw err;
  }
  return {
    cell,
    backends,
    cellAddress,
    backendAddresses,
    cellAddress6,
    backendAddresses6,
    exec,
    connect(ns, proto, host, port, count, timeoutMs = 2000) {
      const args = ['netns', 'exec', ns, process.execPath, '-e', CLIENT, proto, host, String(port), String(count), String(timeoutMs)];
      return JSON.parse(execFileSync('ip', args, { timeout: 5000 + count * timeoutMs }).toString()) as string[];
    },
    async stop() {
      server?.kill('SIGKILL');
      del();
    },
  };
}
