// The Service proxy against the real kernel: testkit's network lab (a "cell" namespace whose
// pod sends the traffic, joined to a "backends" namespace holding every endpoint's address),
// real nftables rules, real TCP and UDP servers, and a client in the cell that connects to
// cluster IPs and node ports as a pod would.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireCommand, startNetLab, waitFor, type NetLab } from '@cello/testkit';
import { ClusterEndpointSlice, ClusterService, Protocol, ServicesUpdate, type ServicesAck } from '@cello/proto/cell';
import { ServiceProxy, type EndpointSlice, type Service, type ServiceSnapshot, type SyncResult } from '../../src/network/services/index.js';
import { startTestAgent, type TestAgent } from '../helpers/agent.js';

let lab: NetLab;
let cellNs: string;
let backendNs: string;
const SUBNET = '10.201.0';
const CELL = `${SUBNET}.1`;
const BACKENDS = [`${SUBNET}.2`, `${SUBNET}.3`, `${SUBNET}.4`];
const SUBNET6 = 'fd00:201::';
const BACKENDS6 = [`${SUBNET6}2`, `${SUBNET6}3`, `${SUBNET6}4`];
const connectMany = (...a: Parameters<NetLab['connect']>) => lab.connect(...a);
const inNs = (ns: string, ...cmd: string[]) => lab.exec(ns, ...cmd);

function service(name: string, over: Partial<Service> = {}): Service {
  return {
    namespace: 'default',
    name,
    clusterIPs: [],
    externalIPs: [],
    ports: [{ name: 'http', protocol: 'TCP', port: 80 }],
    externalTrafficPolicy: 'Cluster',
    internalTrafficPolicy: 'Cluster',
    ...over,
  };
}

function slice(
  svc: string,
  addresses: { ip: string; ready?: boolean; serving?: boolean; terminating?: boolean }[],
  ports: EndpointSlice['ports'] = [{ name: 'http', protocol: 'TCP', port: 8080 }],
): EndpointSlice {
  return {
    namespace: 'default',
    service: svc,
    name: `${svc}-abcde`,
    ports,
    endpoints: addresses.map((a) => ({ addresses: [a.ip], ready: a.ready ?? true, serving: a.serving ?? a.ready ?? true, terminating: a.terminating ?? false })),
  };
}

let proxy: ServiceProxy;
const syncs: SyncResult[] = [];
const transactions: string[] = [];

/**
 * The table as the kernel holds it: each chain's rules with their handles (a rule rewritten,
 * even to the same text, gets a new handle) and each map's elements.
 */
function kernelTable(): { chains: Map<string, string>; maps: Map<string, string[]> } {
  const out = JSON.parse(inNs(cellNs, 'nft', '-j', '-a', 'list', 'table', 'inet', 'cello')) as { nftables: Record<string, Record<string, unknown>>[] };
  const chains = new Map<string, string>();
  const maps = new Map<string, string[]>();
  for (const o of out.nftables) {
    if (o['chain']) chains.set(o['chain']['name'] as string, chains.get(o['chain']['name'] as string) ?? '');
    if (o['rule']) {
      const chain = o['rule']['chain'] as string;
      chains.set(chain, `${chains.get(chain) ?? ''}${JSON.stringify(o['rule'])}\n`);
    }
    if (o['map']) maps.set(o['map']['name'] as string, ((o['map']['elem'] ?? []) as unknown[]).map((e) => JSON.stringify(e)).sort());
  }
  return { chains, maps };
}

beforeAll(async () => {
  requireCommand('nft', 'nftables');
  lab = await startNetLab(`svc${process.pid % 10000}`, SUBNET, SUBNET6);
  ({ cell: cellNs, backends: backendNs } = lab);
  proxy = new ServiceProxy({
    netnsPath: `/run/netns/${cellNs}`,
    localAddresses: () => [CELL],
    onSync: (r) => syncs.push(r),
    onTransaction: (tx) => transactions.push(tx),
  });
}, 30_000);

afterAll(async () => {
  await proxy?.remove();
  await lab?.stop();
});

describe('Service proxy (nftables in a real network namespace)', () => {
  const web = service('web', { clusterIPs: ['10.96.0.10'], ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 30080 }] });
  const webSlice = slice('web', [{ ip: BACKENDS[0]! }, { ip: BACKENDS[1]! }]);

  it('balances a cluster IP over the ready endpoints, at the named target port', async () => {
    // The table of an agent before dual-stack, left by an upgrade: the first full sync removes it.
    inNs(cellNs, 'nft', 'add', 'table', 'ip', 'cello');
    await proxy.sync({ services: [web], slices: [webSlice] });
    expect(syncs.at(-1)!.full).toBe(true);
    expect(inNs(cellNs, 'nft', 'list', 'tables').split('\n')).not.toContain('table ip cello');
    const answers = connectMany(cellNs, 'tcp', '10.96.0.10', 80, 40);
    expect(new Set(answers)).toEqual(new Set([`${BACKENDS[0]}:8080`, `${BACKENDS[1]}:8080`]));
  });

  it('sends nothing to an endpoint that is not ready, and falls back to serving terminating ones only when none is ready', async () => {
    await proxy.sync({
      services: [web],
      slices: [slice('web', [{ ip: BACKENDS[0]! }, { ip: BACKENDS[1]!, ready: false }, { ip: BACKENDS[2]!, ready: false, serving: true, terminating: true }])],
    });
    expect(new Set(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 20))).toEqual(new Set([`${BACKENDS[0]}:8080`]));

    await proxy.sync({
      services: [web],
      slices: [
        slice('web', [
          { ip: BACKENDS[1]!, ready: false },
          { ip: BACKENDS[2]!, ready: false, serving: true, terminating: true },
        ]),
      ],
    });
    expect(new Set(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 20))).toEqual(new Set([`${BACKENDS[2]}:8080`]));
  });

  it('refuses connections at once to a Service with no endpoints', async () => {
    await proxy.sync({ services: [web, service('empty', { clusterIPs: ['10.96.0.11'] })], slices: [webSlice] });
    const started = Date.now();
    expect(connectMany(cellNs, 'tcp', '10.96.0.11', 80, 3)).toEqual(['ERR:ECONNREFUSED', 'ERR:ECONNREFUSED', 'ERR:ECONNREFUSED']);
    expect(Date.now() - started).toBeLessThan(1500);
  });

  it('refuses at once a port the Service at that cluster IP does not have, and still serves the ones it has', async () => {
    await proxy.sync({ services: [web], slices: [webSlice] });
    const started = Date.now();
    expect(connectMany(cellNs, 'tcp', '10.96.0.10', 81, 2)).toEqual(['ERR:ECONNREFUSED', 'ERR:ECONNREFUSED']);
    expect(Date.now() - started).toBeLessThan(1500);
    expect(new Set(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 10))).toEqual(new Set([`${BACKENDS[0]}:8080`, `${BACKENDS[1]}:8080`]));
    // The cluster IP leaves the check with its Service.
    await proxy.sync({ services: [], slices: [] });
    expect(inNs(cellNs, 'nft', 'list', 'set', 'inet', 'cello', 'cluster-ips')).not.toContain('10.96.0.10');
  });

  it('carries UDP, and serves several ports of one Service by name', async () => {
    const multi = service('multi', {
      clusterIPs: ['10.96.0.53'],
      ports: [
        { name: 'dns', protocol: 'UDP', port: 53 },
        { name: 'admin', protocol: 'TCP', port: 81 },
      ],
    });
    const multiSlice = slice(
      'multi',
      [{ ip: BACKENDS[2]! }],
      [
        { name: 'dns', protocol: 'UDP', port: 5353 },
        { name: 'admin', protocol: 'TCP', port: 8081 },
      ],
    );
    await proxy.sync({ services: [web, multi], slices: [webSlice, multiSlice] });
    expect(connectMany(cellNs, 'udp', '10.96.0.53', 53, 3)).toEqual(Array(3).fill(`${BACKENDS[2]}:5353`));
    expect(connectMany(cellNs, 'tcp', '10.96.0.53', 81, 2)).toEqual(Array(2).fill(`${BACKENDS[2]}:8081`));
  });

  it('programs SCTP ports like TCP and UDP ones (the kernel carries them where it has SCTP)', async () => {
    // This kernel's SCTP sockets decide whether traffic can be tried here; the rules are the same
    // nftables objects either way (nft matches the protocol number, no SCTP module needed).
    const sctp = service('sctp', { clusterIPs: ['10.96.0.54'], ports: [{ name: 'assoc', protocol: 'SCTP', port: 80 }] });
    const sctpSlice = slice('sctp', [{ ip: BACKENDS[1]! }, { ip: BACKENDS[0]! }], [{ name: 'assoc', protocol: 'SCTP', port: 9000 }]);
    await proxy.sync({ services: [web, sctp], slices: [webSlice, sctpSlice] });
    const ips = inNs(cellNs, 'nft', 'list', 'map', 'inet', 'cello', 'service-ips');
    expect(ips).toMatch(/10\.96\.0\.54 \. sctp \. 80 : goto bal4-2/);
    const eps = inNs(cellNs, 'nft', 'list', 'map', 'inet', 'cello', 'eps4-2');
    // Both endpoints, in address order, at the slice's target port.
    expect(eps).toMatch(new RegExp(`10\\.96\\.0\\.54 \\. sctp \\. 80 \\. 0 : ${BACKENDS[0]!.replaceAll('.', '\\.')} \\. 9000`));
    expect(eps).toMatch(new RegExp(`10\\.96\\.0\\.54 \\. sctp \\. 80 \\. 1 : ${BACKENDS[1]!.replaceAll('.', '\\.')} \\. 9000`));
    // Only the Service's own protocol is served at that address and port.
    expect(ips).not.toMatch(/10\.96\.0\.54 \. tcp/);
  });

  it('keeps a client on one endpoint with sessionAffinity: ClientIP', async () => {
    const sticky = service('sticky', { clusterIPs: ['10.96.0.12'], sessionAffinity: { timeoutSeconds: 60 } });
    await proxy.sync({
      services: [web, sticky],
      slices: [
        webSlice,
        slice(
          'sticky',
          BACKENDS.map((ip) => ({ ip })),
        ),
      ],
    });
    const answers = connectMany(cellNs, 'tcp', '10.96.0.12', 80, 30);
    expect(answers[0]).toMatch(/^10\.201\.0\.\d:8080$/);
    expect(new Set(answers).size).toBe(1);
  });

  it('serves a node port on the cell address to clients outside the cell, masqueraded', async () => {
    await proxy.sync({ services: [web], slices: [webSlice] });
    const answers = connectMany(backendNs, 'tcp', CELL, 30080, 20);
    expect(new Set(answers)).toEqual(new Set([`${BACKENDS[0]}:8080`, `${BACKENDS[1]}:8080`]));
  });

  it('drops, rather than refuses, traffic a Local policy has no endpoint on this cell for', async () => {
    const local = service('local', { clusterIPs: ['10.96.0.13'], internalTrafficPolicy: 'Local' });
    await proxy.sync({ services: [web, local], slices: [webSlice, slice('local', [{ ip: BACKENDS[0]! }])] });
    expect(connectMany(cellNs, 'tcp', '10.96.0.13', 80, 1, 700)).toEqual(['ERR:ETIMEDOUT']);
  });

  it('applies one endpoint change as a small partial transaction, and removes what a deleted Service owned', async () => {
    // 300 Services besides `web`, so a full rewrite would be obvious in the transaction.
    const many: ServiceSnapshot = { services: [web], slices: [webSlice] };
    for (let i = 0; i < 300; i++) {
      many.services.push(service(`s${i}`, { clusterIPs: [`10.97.${i >> 8}.${i & 255}`] }));
      many.slices.push(slice(`s${i}`, [{ ip: BACKENDS[0]! }, { ip: BACKENDS[1]! }]));
    }
    await proxy.sync(many);
    const full = transactions.at(-1)!;
    for (let i = 0; i < 300; i++) expect(full).toContain(`10.97.${i >> 8}.${i & 255} . tcp . 80 `);

    // One endpoint of `web` goes.
    const changed: ServiceSnapshot = { services: many.services, slices: [slice('web', [{ ip: BACKENDS[1]! }]), ...many.slices.slice(1)] };
    await proxy.sync(changed);
    const last = syncs.at(-1)!;
    expect(last.full).toBe(false);
    expect(last.commands).toBeGreaterThan(0);
    expect(last.commands).toBeLessThan(15);
    expect(transactions.at(-1)!).not.toContain('10.97.');
    expect(new Set(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 10))).toEqual(new Set([`${BACKENDS[1]}:8080`]));

    // `web` is deleted: its cluster IP no longer answers, its chains and elements are gone.
    await proxy.sync({ services: many.services.slice(1), slices: many.slices.slice(1) });
    const table = inNs(cellNs, 'nft', 'list', 'table', 'inet', 'cello');
    expect(table).not.toContain('default/web/');
    expect(table).not.toContain('10.96.0.10 ');
    expect(table).toContain('10.97.1.43 . tcp . 80 : goto bal4-2');
    expect(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 1, 700)).toEqual(['ERR:ETIMEDOUT']);
  });

  it("applies a change as a transaction holding only the changed Service's map elements; no other object is touched in the kernel", async () => {
    const others: ServiceSnapshot = { services: [web], slices: [webSlice] };
    for (let i = 0; i < 40; i++) {
      others.services.push(service(`t${i}`, { clusterIPs: [`10.98.0.${i + 1}`] }));
      others.slices.push(slice(`t${i}`, [{ ip: BACKENDS[0]! }, { ip: BACKENDS[1]! }, { ip: BACKENDS[2]! }]));
    }
    await proxy.sync(others);
    const before = kernelTable();
    // Every element of a Service names its cluster IP; the rest of the map must be as it was.
    const without = (maps: Map<string, string[]>, ip: string) => new Map([...maps].map(([name, els]) => [name, els.filter((e) => !e.includes(`"${ip}"`))]));

    // t7 loses two endpoints: its elements move from the 3-endpoint balancer to the 1-endpoint
    // one, which the transaction creates (no Service used it before).
    const t7 = others.slices.findIndex((x) => x.service === 't7');
    const oneLeft = { services: others.services, slices: others.slices.map((x, i) => (i === t7 ? slice('t7', [{ ip: BACKENDS[2]! }]) : x)) };
    await proxy.sync(oneLeft);
    expect(syncs.at(-1)!.full).toBe(false);
    const tx = transactions.at(-1)!.trim().split('\n');
    for (const line of tx) expect(line).toMatch(/ (bal4-1|eps4-1)( |$)|\{ 10\.98\.0\.8 \. tcp \. 80 /);
    const after = kernelTable();
    for (const [name, rules] of before.chains) expect({ name, rules: after.chains.get(name) }).toEqual({ name, rules });
    expect([...after.chains.keys()].filter((c) => !before.chains.has(c))).toEqual(['bal4-1']);
    expect(without(after.maps, '10.98.0.8')).toEqual(new Map([...without(before.maps, '10.98.0.8'), ['eps4-1', []]]));
    expect(after.maps.get('eps4-1')!.join()).toContain('"10.98.0.8"');
    expect(connectMany(cellNs, 'tcp', '10.98.0.8', 80, 5)).toEqual(Array(5).fill(`${BACKENDS[2]}:8080`));

    // t9 loses every endpoint: its elements move to the no-endpoint map.
    const t9 = others.slices.findIndex((x) => x.service === 't9');
    await proxy.sync({ services: oneLeft.services, slices: oneLeft.slices.filter((_, i) => i !== t9) });
    const tx2 = transactions.at(-1)!.trim().split('\n');
    for (const line of tx2) expect(line).toMatch(/\{ 10\.98\.0\.10 \. tcp \. 80 /);
    expect(tx2.some((l) => l.startsWith('add element inet cello no-endpoint-services '))).toBe(true);
    const gone = kernelTable();
    expect(gone.chains).toEqual(after.chains);
    expect(without(gone.maps, '10.98.0.10')).toEqual(without(after.maps, '10.98.0.10'));
    expect(connectMany(cellNs, 'tcp', '10.98.0.10', 80, 1)).toEqual(['ERR:ECONNREFUSED']);

    // t7 back to three endpoints: the 1-endpoint balancer, now unused, is deleted.
    await proxy.sync({ services: others.services, slices: others.slices.filter((_, i) => i !== t9) });
    expect(kernelTable().chains.has('bal4-1')).toBe(false);
    expect(new Set(connectMany(cellNs, 'tcp', '10.98.0.8', 80, 30))).toEqual(new Set(BACKENDS.map((b) => `${b}:8080`)));
  });

  it('serves IPv6 cluster IPs of a dual-stack Service from its IPv6 endpoints, and IPv4 from IPv4', async () => {
    const dual = service('dual', {
      clusterIPs: ['10.96.0.20', 'fd00:96::20'],
      ports: [
        { name: 'http', protocol: 'TCP', port: 80 },
        { name: 'dns', protocol: 'UDP', port: 53 },
      ],
    });
    const ports: EndpointSlice['ports'] = [
      { name: 'http', protocol: 'TCP', port: 8080 },
      { name: 'dns', protocol: 'UDP', port: 5353 },
    ];
    const v4 = slice('dual', [{ ip: BACKENDS[0]! }], ports);
    const v6 = { ...slice('dual', [{ ip: BACKENDS6[1]! }, { ip: BACKENDS6[2]! }], ports), name: 'dual-v6' };
    const sticky6 = service('sticky6', { clusterIPs: ['fd00:96::21'], sessionAffinity: { timeoutSeconds: 60 } });
    const v6only = service('v6only', { clusterIPs: ['fd00:96::22'] });
    await proxy.sync({
      services: [web, dual, sticky6, v6only],
      slices: [
        webSlice,
        v4,
        v6,
        slice(
          'sticky6',
          BACKENDS6.map((ip) => ({ ip })),
        ),
        slice('v6only', [{ ip: BACKENDS[1]! }]),
      ],
    });
    expect(connectMany(cellNs, 'tcp', '10.96.0.20', 80, 5)).toEqual(Array(5).fill(`${BACKENDS[0]}:8080`));
    expect(new Set(connectMany(cellNs, 'tcp', 'fd00:96::20', 80, 30))).toEqual(new Set([`${BACKENDS6[1]}:8080`, `${BACKENDS6[2]}:8080`]));
    for (const a of connectMany(cellNs, 'udp', 'fd00:96::20', 53, 3)) expect([`${BACKENDS6[1]}:5353`, `${BACKENDS6[2]}:5353`]).toContain(a);
    const sticky = connectMany(cellNs, 'tcp', 'fd00:96::21', 80, 20);
    expect(BACKENDS6.map((b) => `${b}:8080`)).toContain(sticky[0]);
    expect(new Set(sticky).size).toBe(1);
    // An IPv6 cluster IP whose Service has only IPv4 endpoints has none it can use: refused.
    expect(connectMany(cellNs, 'tcp', 'fd00:96::22', 80, 1)).toEqual(['ERR:ECONNREFUSED']);
  });

  it('rejects a snapshot nft cannot apply, keeps the rules it had, and rebuilds the table on the next sync', async () => {
    await proxy.sync({ services: [web], slices: [webSlice] });
    const bad = service('bad', { clusterIPs: ['10.96.0.300'] });
    await expect(proxy.sync({ services: [web, bad], slices: [webSlice] })).rejects.toThrow(/nft -f - in \/run\/netns\/.* failed: .*10\.96\.0\.300/s);
    // The kernel applied none of the failed transaction.
    expect(new Set(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 10))).toEqual(new Set([`${BACKENDS[0]}:8080`, `${BACKENDS[1]}:8080`]));
    await proxy.sync({ services: [web], slices: [slice('web', [{ ip: BACKENDS[2]! }])] });
    expect(syncs.at(-1)!.full).toBe(true);
    expect(connectMany(cellNs, 'tcp', '10.96.0.10', 80, 5)).toEqual(Array(5).fill(`${BACKENDS[2]}:8080`));
  });
});

describe('SyncServices (the agent RPC the controller streams Services on)', () => {
  let agent: TestAgent;
  beforeAll(async () => {
    agent = await startTestAgent(undefined, { podNetns: `/run/netns/${cellNs}`, podIP: CELL });
  }, 30_000);
  afterAll(async () => {
    await agent?.stop();
  });

  const wireService = (name: string, clusterIP: string, over: Partial<ClusterService> = {}): ClusterService =>
    ClusterService.fromPartial({ namespace: 'default', name, clusterIps: [clusterIP], ports: [{ name: 'http', protocol: Protocol.PROTOCOL_TCP, port: 80 }], ...over });
  const wireSlice = (service: string, ips: string[]): ClusterEndpointSlice =>
    ClusterEndpointSlice.fromPartial({
      namespace: 'default',
      name: `${service}-x`,
      service,
      ports: [{ name: 'http', protocol: Protocol.PROTOCOL_TCP, port: 8080 }],
      endpoints: ips.map((ip) => ({ addresses: [ip], ready: true, serving: true })),
    });

  function open() {
    const call = agent.client.syncServices();
    const acks: ServicesAck[] = [];
    call.on('data', (a: ServicesAck) => acks.push(a));
    call.on('error', () => {});
    const send = async (u: Partial<ServicesUpdate>) => {
      const n = acks.length;
      call.write(ServicesUpdate.fromPartial(u));
      await waitFor('the agent acknowledges the update', () => acks.length > n, { timeoutMs: 15_000 });
      return acks[n]!;
    };
    return { call, send, acks };
  }

  it('applies a snapshot and then deltas, each acknowledged once its rules are live', async () => {
    const s = open();
    const ack1 = await s.send({ version: 1, services: [wireService('api', '10.96.1.1')], slices: [wireSlice('api', [BACKENDS[0]!])] });
    expect(ack1).toMatchObject({ version: 1, resync: false, error: '' });
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 3)).toEqual(Array(3).fill(`${BACKENDS[0]}:8080`));

    const ack2 = await s.send({ version: 2, baseVersion: 1, slices: [wireSlice('api', [BACKENDS[1]!])] });
    expect(ack2).toMatchObject({ version: 2, error: '' });
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 3)).toEqual(Array(3).fill(`${BACKENDS[1]}:8080`));

    const ack3 = await s.send({ version: 3, baseVersion: 2, removedServices: [{ namespace: 'default', name: 'api' }] });
    expect(ack3).toMatchObject({ version: 3, error: '' });
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 1, 700)).toEqual(['ERR:ETIMEDOUT']);
    s.call.end();
  });

  it('asks for a snapshot when a delta does not follow what the cell has', async () => {
    const s = open();
    await s.send({ version: 10, services: [wireService('api', '10.96.1.1')], slices: [wireSlice('api', [BACKENDS[0]!])] });
    const ack = await s.send({ version: 12, baseVersion: 11, slices: [wireSlice('api', [BACKENDS[1]!])] });
    expect(ack).toMatchObject({ version: 10, resync: true });
    expect(ack.error).toMatch(/delta on version 11, but this cell has 10/);
    // Nothing of the refused delta was applied.
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 2)).toEqual(Array(2).fill(`${BACKENDS[0]}:8080`));
    s.call.end();
  });

  it('refuses hostile or malformed objects by name and still programs the others', async () => {
    const s = open();
    const ack = await s.send({
      version: 20,
      services: [
        wireService('api', '10.96.1.1'),
        // A name that would end the nft command and start another.
        wireService('x } ; flush ruleset ; add table ip evil {', '10.96.1.2'),
        wireService('badip', '10.96.1.999'),
        wireService('badport', '10.96.1.3', { ports: [{ name: 'http', protocol: Protocol.PROTOCOL_TCP, port: 70000, nodePort: 0 }] }),
        wireService('badpolicy', '10.96.1.4', { externalTrafficPolicy: 'Nearest' }),
        wireService('v6external', '10.96.1.5', { externalIps: ['fd00:96::5'] }),
        // A zone would end up in an nft command: not an address a Service can have.
        wireService('zone', 'fe80::1%lab0'),
      ],
      slices: [wireSlice('api', [BACKENDS[2]!]), wireSlice('badslice', ['not-an-ip'])],
    });
    expect(ack.error).toBe('');
    expect(ack.rejected).toEqual([
      expect.stringMatching(/^Service default\/x } ; flush ruleset.*: namespace and name must be DNS labels$/),
      'Service default/badip: 10.96.1.999 is not an IP address',
      'Service default/badport: ports[0].port: 70000 is not in 1-65535',
      'Service default/badpolicy: externalTrafficPolicy: "Nearest" is not Cluster or Local',
      'Service default/v6external: externalIPs: fd00:96::5: IPv6 external and load-balancer IPs are not served on cells (IPv6 cluster IPs are)',
      'Service default/zone: fe80::1%lab0 is not an IP address',
      'EndpointSlice default/badslice-x: endpoints[0].addresses: not-an-ip is not an IP address',
    ]);
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 2)).toEqual(Array(2).fill(`${BACKENDS[2]}:8080`));
    expect(inNs(cellNs, 'nft', 'list', 'tables')).not.toContain('evil');
    s.call.end();
  });

  it('lets a newer stream replace the one before it', async () => {
    const first = open();
    await first.send({ version: 30, services: [wireService('api', '10.96.1.1')], slices: [wireSlice('api', [BACKENDS[0]!])] });
    const ended = new Promise<void>((r) => first.call.on('end', () => r()));
    const second = open();
    await second.send({ version: 31, services: [wireService('api', '10.96.1.1')], slices: [wireSlice('api', [BACKENDS[1]!])] });
    await ended;
    expect(connectMany(cellNs, 'tcp', '10.96.1.1', 80, 2)).toEqual(Array(2).fill(`${BACKENDS[1]}:8080`));
    second.call.end();
  });
});
