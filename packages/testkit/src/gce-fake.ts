import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * GCE FAKE — a local stand-in for the Compute Engine REST API (compute/v1) and for the GCE
 * metadata server, on 127.0.0.1. No Compute Engine emulator exists, so the gce provider's
 * tests run against this fake. It implements only the calls the provider makes, with the REST
 * shapes of the protos shipped in @google-cloud/compute (field names checked against
 * build/protos/protos.json): instances insert/get/list/delete/aggregatedList, zone and global
 * operations get/wait (long-running: an operation is RUNNING for `operationMs`, then DONE),
 * machineTypes aggregatedList, regions get (with quotas counted from the fake's instances),
 * firewalls insert/list/get/delete. Errors are GCE's: HTTP errors as {error: {code, message,
 * errors: [{reason}]}}, and an insert that cannot be served fails in its operation with
 * ZONE_RESOURCE_POOL_EXHAUSTED or QUOTA_EXCEEDED, leaving no instance, as GCE does.
 *
 * Every API request must carry `Authorization: Bearer <token>` (401 otherwise). A booted
 * instance gets a metadata server of its own (GCE's is per instance too), which refuses
 * requests without `Metadata-Flavor: Google` (403) and serves computeMetadata/v1 paths from
 * the instance's record: id, name, zone, machine-type, attributes/<key>, preempted, ...
 */
export interface GceFake {
  /** http://127.0.0.1:PORT — the API root (the provider's `endpoint` in tests). */
  endpoint: string;
  project: string;
  region: string;
  zones: string[];
  /** The bearer token the fake accepts. */
  token: string;
  /**
   * An auth client for @google-cloud/compute's REST transport (its `authClient` option) that
   * sends the fake's token, where Application Default Credentials would send a real one.
   */
  authClient: StaticTokenAuthClient;
  /** Instances by `zone/name`, as the API returns them (live objects: tests may read them). */
  instances(): Array<Record<string, unknown>>;
  firewalls(): Array<Record<string, unknown>>;
  /** Requests served, by method and route, e.g. "POST instances.insert". */
  calls: string[];
  /** Inserts matching this fail in their operation with `code` until the returned function is called. */
  failInserts(rule: InsertFault): () => void;
  /** Sets a region quota's limit (INSTANCES, CPUS, PREEMPTIBLE_CPUS). */
  setQuota(metric: string, limit: number): void;
  /** Starts the metadata server of an instance (`zone/name`); resolves to its base URL. */
  bootMetadata(instanceId: string): Promise<string>;
  /** Marks a Spot instance preempted: instance/preempted reads TRUE, then after `deleteAfterMs` the instance is gone. */
  preempt(instanceId: string, deleteAfterMs?: number): void;
  stop(): Promise<void>;
}

export interface StaticTokenAuthClient {
  universeDomain: string;
  getRequestHeaders(): Promise<Headers>;
  fetch(url: string | URL, init?: RequestInit): Promise<Response>;
}

export interface InsertFault {
  code: 'ZONE_RESOURCE_POOL_EXHAUSTED' | 'QUOTA_EXCEEDED' | 'ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS';
  machineType?: string;
  zone?: string;
  /** Only inserts with this provisioning model (STANDARD when the request has none). */
  provisioningModel?: 'SPOT' | 'STANDARD';
}

export interface GceFakeOptions {
  project?: string;
  region?: string;
  zones?: string[];
  /** How long an operation stays RUNNING. Default 30 ms. */
  operationMs?: number;
  quotas?: Record<string, number>;
}

interface MachineTypeSpec {
  name: string;
  guestCpus: number;
  memoryMb: number;
  isSharedCpu?: boolean;
  architecture: 'X86_64' | 'ARM64';
  accelerators?: Array<{ guestAcceleratorType: string; guestAcceleratorCount: number }>;
}

/** A few real machine types with their real shapes (cloud.google.com/compute/docs/machine-resource). */
const MACHINE_TYPES: MachineTypeSpec[] = [
  { name: 'e2-micro', guestCpus: 2, memoryMb: 1024, isSharedCpu: true, architecture: 'X86_64' },
  { name: 'e2-small', guestCpus: 2, memoryMb: 2048, isSharedCpu: true, architecture: 'X86_64' },
  { name: 'e2-medium', guestCpus: 2, memoryMb: 4096, isSharedCpu: true, architecture: 'X86_64' },
  { name: 'e2-standard-2', guestCpus: 2, memoryMb: 8192, architecture: 'X86_64' },
  { name: 'e2-standard-4', guestCpus: 4, memoryMb: 16384, architecture: 'X86_64' },
  { name: 'n2-standard-2', guestCpus: 2, memoryMb: 8192, architecture: 'X86_64' },
  { name: 't2a-standard-1', guestCpus: 1, memoryMb: 4096, architecture: 'ARM64' },
  { name: 'g2-standard-4', guestCpus: 4, memoryMb: 16384, architecture: 'X86_64', accelerators: [{ guestAcceleratorType: 'nvidia-l4', guestAcceleratorCount: 1 }] },
];

/**
 * A predefined type, or a custom one (FAMILY-custom-VCPUS-MEMORY_MB of e2, n2, n2d) within GCE's
 * rules: an even vCPU count from 2, memory in 256 MB steps, 0.5-8 GB per vCPU.
 */
function specOf(name: string): MachineTypeSpec | undefined {
  const predefined = MACHINE_TYPES.find((m) => m.name === name);
  if (predefined) return predefined;
  const m = /^(e2|n2|n2d)-custom-(\d+)-(\d+)$/.exec(name);
  if (!m) return undefined;
  const guestCpus = Number(m[2]);
  const memoryMb = Number(m[3]);
  const per = memoryMb / 1024 / guestCpus;
  if (guestCpus < 2 || guestCpus % 2 !== 0 || memoryMb % 256 !== 0 || per < 0.5 || per > 8) return undefined;
  return { name, guestCpus, memoryMb, architecture: 'X86_64' };
}

const DEFAULT_QUOTAS: Record<string, number> = { INSTANCES: 24, CPUS: 24, PREEMPTIBLE_CPUS: 24, IN_USE_ADDRESSES: 8 };

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

const NAME_RE = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
const LABEL_KEY_RE = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE_RE = /^[a-z0-9_-]{0,63}$/;

export async function startGceFake(o: GceFakeOptions = {}): Promise<GceFake> {
  const project = o.project ?? 'cello-test';
  const region = o.region ?? 'us-central1';
  const zones = o.zones ?? [`${region}-a`, `${region}-b`];
  const operationMs = o.operationMs ?? 30;
  const quotas = { ...DEFAULT_QUOTAS, ...o.quotas };
  const token = randomBytes(18).toString('base64url');
  const base = `https://www.googleapis.com/compute/v1/projects/${project}`;
  const instances = new Map<string, Record<string, unknown>>();
  const firewalls = new Map<string, Record<string, unknown>>();
  const operations = new Map<string, { op: Record<string, unknown>; doneAt: number; finish: () => void }>();
  const faults = new Set<InsertFault>();
  const preempted = new Set<string>();
  const metadataServers = new Map<string, Server>();
  const timers = new Set<NodeJS.Timeout>();
  const calls: string[] = [];
  let nextId = 1000n + BigInt(Date.now() % 1_000_000) * 1000n;
  let nextIp = 2;
  const id = () => String(nextId++);
  const now = () => new Date().toISOString();

  const machineType = (zone: string, name: string): MachineTypeSpec | undefined => (zones.includes(zone) ? specOf(name) : undefined);
  const machineTypeJson = (zone: string, m: MachineTypeSpec) => ({
    kind: 'compute#machineType',
    id: String(9_000 + MACHINE_TYPES.indexOf(m)),
    creationTimestamp: '2024-01-01T00:00:00.000-08:00',
    name: m.name,
    description: `${m.guestCpus} vCPUs, ${m.memoryMb / 1024} GB RAM`,
    guestCpus: m.guestCpus,
    memoryMb: m.memoryMb,
    imageSpaceGb: 0,
    maximumPersistentDisks: 128,
    maximumPersistentDisksSizeGb: '263168',
    zone,
    selfLink: `${base}/zones/${zone}/machineTypes/${m.name}`,
    isSharedCpu: m.isSharedCpu ?? false,
    architecture: m.architecture,
    ...(m.accelerators ? { accelerators: m.accelerators } : {}),
  });

  /** Quota usage, counted from the instances in the region (every instance counts, as in GCE). */
  const usage = (metric: string): number => {
    let n = 0;
    for (const i of instances.values()) {
      const mt = specOf(String(i['machineType']).split('/').pop() ?? '');
      const spot = (i['scheduling'] as { provisioningModel?: string } | undefined)?.provisioningModel === 'SPOT';
      if (metric === 'INSTANCES') n += 1;
      else if (metric === 'CPUS' && !spot) n += mt?.guestCpus ?? 0;
      else if (metric === 'PREEMPTIBLE_CPUS' && spot) n += mt?.guestCpus ?? 0;
    }
    return n;
  };

  function newOperation(
    kind: 'zone' | 'global',
    zone: string | undefined,
    operationType: string,
    targetLink: string,
    work: () => { code: string; message: string } | undefined,
  ): Record<string, unknown> {
    const name = `operation-${Date.now()}-${randomBytes(6).toString('hex')}`;
    const op: Record<string, unknown> = {
      kind: 'compute#operation',
      id: id(),
      name,
      operationType,
      targetLink,
      targetId: id(),
      status: 'RUNNING',
      user: 'cello-controller@cello-test.iam.gserviceaccount.com',
      progress: 0,
      insertTime: now(),
      startTime: now(),
      selfLink: kind === 'zone' ? `${base}/zones/${zone}/operations/${name}` : `${base}/global/operations/${name}`,
      ...(zone ? { zone: `${base}/zones/${zone}` } : {}),
    };
    const entry = {
      op,
      doneAt: Date.now() + operationMs,
      finish: () => {
        if (op['status'] === 'DONE') return;
        const err = work();
        op['status'] = 'DONE';
        op['progress'] = 100;
        op['endTime'] = now();
        if (err) {
          op['error'] = { errors: [{ code: err.code, message: err.message }] };
          op['httpErrorStatusCode'] = err.code === 'QUOTA_EXCEEDED' ? 403 : 503;
          op['httpErrorMessage'] = err.code === 'QUOTA_EXCEEDED' ? 'FORBIDDEN' : 'SERVICE UNAVAILABLE';
        }
      },
    };
    operations.set(name, entry);
    const t = setTimeout(() => {
      timers.delete(t);
      entry.finish();
    }, operationMs);
    timers.add(t);
    return op;
  }

  function insertInstance(zone: string, body: Record<string, unknown>): Record<string, unknown> {
    const name = body['name'];
    if (typeof name !== 'string' || !NAME_RE.test(name))
      throw new HttpError(400, 'invalid', `Invalid value for field 'resource.name': '${String(name)}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'`);
    const mtUrl = String(body['machineType'] ?? '');
    const mtName = mtUrl.split('/').pop() ?? '';
    if (!/(^|\/)zones\/[^/]+\/machineTypes\/[^/]+$/.test(mtUrl))
      throw new HttpError(400, 'invalid', `Invalid value for field 'resource.machineType': '${mtUrl}'. Must be a URL to a machine type`);
    const mt = machineType(zone, mtName);
    if (!mt)
      throw new HttpError(400, 'invalid', `Invalid value for field 'resource.machineType': '${mtUrl}'. Machine type with name '${mtName}' does not exist in zone '${zone}'.`);
    const labels = (body['labels'] ?? {}) as Record<string, string>;
    for (const [k, v] of Object.entries(labels)) {
      if (!LABEL_KEY_RE.test(k) || !LABEL_VALUE_RE.test(v)) throw new HttpError(400, 'invalid', `Invalid value for field 'resource.labels': '${k}=${v}'`);
    }
    const disks = (body['disks'] ?? []) as Array<Record<string, unknown>>;
    if (!disks.some((d) => d['boot'] === true)) throw new HttpError(400, 'invalid', "Invalid value for field 'resource.disks': no boot disk");
    if (!Array.isArray(body['networkInterfaces']) || body['networkInterfaces'].length === 0)
      throw new HttpError(400, 'invalid', "Invalid value for field 'resource.networkInterfaces'");
    const key = `${zone}/${name}`;
    const selfLink = `${base}/zones/${zone}/instances/${name}`;
    if (instances.has(key)) throw new HttpError(409, 'alreadyExists', `The resource 'projects/${project}/zones/${zone}/instances/${name}' already exists`);
    const scheduling = (body['scheduling'] ?? {}) as Record<string, unknown>;
    const model = scheduling['provisioningModel'] === 'SPOT' ? 'SPOT' : 'STANDARD';
    if (model === 'SPOT' && scheduling['instanceTerminationAction'] === undefined) {
      // GCE's default for Spot is STOP; accepted, recorded as such.
      scheduling['instanceTerminationAction'] = 'STOP';
    }
    const fault = [...faults].find((f) => (!f.machineType || f.machineType === mtName) && (!f.zone || f.zone === zone) && (!f.provisioningModel || f.provisioningModel === model));
    const instanceId = id();
    const ip = `10.128.0.${nextIp++ % 250}`;
    const record: Record<string, unknown> = {
      ...body,
      kind: 'compute#instance',
      id: instanceId,
      creationTimestamp: now(),
      zone: `${base}/zones/${zone}`,
      selfLink,
      status: 'PROVISIONING',
      machineType: `${base}/zones/${zone}/machineTypes/${mtName}`,
      scheduling: { ...scheduling, provisioningModel: model, ...(model === 'SPOT' ? { preemptible: false, automaticRestart: false, onHostMaintenance: 'TERMINATE' } : {}) },
      networkInterfaces: (body['networkInterfaces'] as Array<Record<string, unknown>>).map((n, i) => ({
        kind: 'compute#networkInterface',
        name: `nic${i}`,
        networkIP: ip,
        ...n,
        ...(Array.isArray(n['accessConfigs'])
          ? { accessConfigs: (n['accessConfigs'] as Array<Record<string, unknown>>).map((a) => ({ kind: 'compute#accessConfig', ...a, natIP: `203.0.113.${nextIp % 250}` })) }
          : {}),
      })),
      labelFingerprint: randomBytes(6).toString('base64'),
      fingerprint: randomBytes(6).toString('base64'),
    };
    const quotaRefusal = (): { code: string; message: string } | undefined => {
      const cpusMetric = model === 'SPOT' ? 'PREEMPTIBLE_CPUS' : 'CPUS';
      if (usage('INSTANCES') + 1 > quotas['INSTANCES']!)
        return { code: 'QUOTA_EXCEEDED', message: `Quota 'INSTANCES' exceeded.  Limit: ${quotas['INSTANCES']}.0 in region ${region}.` };
      if (usage(cpusMetric) + mt.guestCpus > quotas[cpusMetric]!)
        return { code: 'QUOTA_EXCEEDED', message: `Quota '${cpusMetric}' exceeded.  Limit: ${quotas[cpusMetric]}.0 in region ${region}.` };
      return undefined;
    };
    // GCE checks quota when it accepts the request, and learns of a zone's shortage while the
    // operation runs: in both cases the operation ends with the error and no instance is left.
    const refusal = fault ? { code: fault.code, message: faultMessage(fault.code, mtName, zone) } : quotaRefusal();
    if (!refusal) instances.set(key, record);
    return newOperation('zone', zone, 'insert', selfLink, () => {
      if (refusal) return refusal;
      if (instances.get(key) === record) {
        record['status'] = 'RUNNING';
        record['lastStartTimestamp'] = now();
      }
      return undefined;
    });
  }

  function faultMessage(code: string, mt: string, zone: string): string {
    if (code === 'QUOTA_EXCEEDED') return `Quota 'CPUS' exceeded.  Limit: 0.0 in region ${region}.`;
    return `The zone 'projects/${project}/zones/${zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later. (${mt})`;
  }

  function deleteInstance(zone: string, name: string): Record<string, unknown> {
    const key = `${zone}/${name}`;
    const rec = instances.get(key);
    if (!rec) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/zones/${zone}/instances/${name}' was not found`);
    rec['status'] = 'STOPPING';
    return newOperation('zone', zone, 'delete', String(rec['selfLink']), () => {
      instances.delete(key);
      preempted.delete(key);
      void stopMetadata(key);
      return undefined;
    });
  }

  /** GCE's filter syntax, the part the provider uses: `(a = "b") (c != d)` or `a = b AND c = d` on labels.*, name, status. */
  function matcher(filter: string | null): (i: Record<string, unknown>) => boolean {
    if (!filter) return () => true;
    const parts = filter.includes('(') ? [...filter.matchAll(/\(([^)]*)\)/g)].map((m) => m[1]!.trim()) : filter.split(/\s+AND\s+/).map((s) => s.trim());
    const tests = parts.map((p) => {
      const m = /^([a-zA-Z][\w.-]*)\s*(=|!=)\s*"?([^"]*)"?$/.exec(p);
      if (!m) throw new HttpError(400, 'invalid', `Invalid value for field 'filter': '${filter}'. Invalid list filter expression.`);
      const [, field, op, value] = m as unknown as [string, string, string, string];
      const get = (i: Record<string, unknown>): string | undefined => {
        if (field.startsWith('labels.')) return (i['labels'] as Record<string, string> | undefined)?.[field.slice(7)];
        if (field === 'name' || field === 'status') return i[field] as string;
        throw new HttpError(400, 'invalid', `Invalid value for field 'filter': '${filter}'. The fake supports labels.*, name and status.`);
      };
      return (i: Record<string, unknown>) => (op === '=' ? get(i) === value : get(i) !== value);
    });
    return (i) => tests.every((t) => t(i));
  }

  function page<T>(items: T[], q: URLSearchParams): { items: T[]; nextPageToken?: string } {
    const max = Math.min(Number(q.get('maxResults') ?? 500) || 500, 500);
    const start = Number(q.get('pageToken') ?? 0) || 0;
    const slice = items.slice(start, start + max);
    return { items: slice, ...(start + max < items.length ? { nextPageToken: String(start + max) } : {}) };
  }

  const noResults = (scope: string) => ({
    warning: { code: 'NO_RESULTS_ON_PAGE', message: `There are no results for scope '${scope}' on this page.`, data: [{ key: 'scope', value: scope }] },
  });

  function route(method: string, path: string, q: URLSearchParams, body: Record<string, unknown>): { name: string; run: () => unknown } | undefined {
    const p = `/compute/v1/projects/${project}/`;
    if (!path.startsWith(p)) {
      const other = /^\/compute\/v1\/projects\/([^/]+)\//.exec(path);
      if (other)
        return {
          name: 'project',
          run: () => {
            throw new HttpError(403, 'forbidden', `Required 'compute.instances.list' permission for 'projects/${other[1]}'`);
          },
        };
      return undefined;
    }
    const rest = path.slice(p.length).split('/').map(decodeURIComponent);
    const zoneOk = (z: string) => {
      if (!zones.includes(z)) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/zones/${z}' was not found`);
    };
    const [a, b, c, d, e] = rest;
    if (a === 'zones' && b && c === 'instances') {
      if (method === 'POST' && d === undefined) return { name: 'instances.insert', run: () => (zoneOk(b), insertInstance(b, body)) };
      if (method === 'GET' && d === undefined)
        return {
          name: 'instances.list',
          run: () => {
            zoneOk(b);
            const m = matcher(q.get('filter'));
            const r = page(
              [...instances.entries()].filter(([k, i]) => k.startsWith(`${b}/`) && m(i)).map(([, i]) => i),
              q,
            );
            return { kind: 'compute#instanceList', id: `projects/${project}/zones/${b}/instances`, selfLink: `${base}/zones/${b}/instances`, ...r };
          },
        };
      if (d && e === undefined && method === 'GET')
        return {
          name: 'instances.get',
          run: () => {
            zoneOk(b);
            const i = instances.get(`${b}/${d}`);
            if (!i) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/zones/${b}/instances/${d}' was not found`);
            return i;
          },
        };
      if (d && e === undefined && method === 'DELETE') return { name: 'instances.delete', run: () => (zoneOk(b), deleteInstance(b, d)) };
    }
    if (a === 'aggregated' && b === 'instances' && method === 'GET')
      return {
        name: 'instances.aggregatedList',
        run: () => {
          const m = matcher(q.get('filter'));
          const items: Record<string, unknown> = {};
          for (const z of zones) {
            const list = [...instances.entries()].filter(([k, i]) => k.startsWith(`${z}/`) && m(i)).map(([, i]) => i);
            items[`zones/${z}`] = list.length ? { instances: list } : noResults(`zones/${z}`);
          }
          return { kind: 'compute#instanceAggregatedList', id: `projects/${project}/aggregated/instances`, items, selfLink: `${base}/aggregated/instances` };
        },
      };
    if (a === 'aggregated' && b === 'machineTypes' && method === 'GET')
      return {
        name: 'machineTypes.aggregatedList',
        run: () => {
          const items: Record<string, unknown> = {};
          for (const z of zones) items[`zones/${z}`] = { machineTypes: MACHINE_TYPES.map((m) => machineTypeJson(z, m)) };
          return { kind: 'compute#machineTypeAggregatedList', id: `projects/${project}/aggregated/machineTypes`, items, selfLink: `${base}/aggregated/machineTypes` };
        },
      };
    if ((a === 'zones' && b && c === 'operations' && d) || (a === 'global' && b === 'operations' && c)) {
      const name = a === 'zones' ? d! : c!;
      const wait = (a === 'zones' ? e : d) === 'wait';
      if ((method === 'GET' && !wait) || (method === 'POST' && wait))
        return {
          name: `${a === 'zones' ? 'zoneOperations' : 'globalOperations'}.${wait ? 'wait' : 'get'}`,
          run: async () => {
            if (a === 'zones') zoneOk(b!);
            const entry = operations.get(name);
            if (!entry) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/${a === 'zones' ? `zones/${b}` : 'global'}/operations/${name}' was not found`);
            // wait returns when DONE or after a while (GCE: up to 2 minutes; here 2 seconds).
            if (wait) {
              const until = Date.now() + 2000;
              while (entry.op['status'] !== 'DONE' && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
            }
            return entry.op;
          },
        };
    }
    if (a === 'regions' && b && c === undefined && method === 'GET')
      return {
        name: 'regions.get',
        run: () => {
          if (b !== region) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/regions/${b}' was not found`);
          return {
            kind: 'compute#region',
            id: '1000',
            creationTimestamp: '1969-12-31T16:00:00.000-08:00',
            name: region,
            description: region,
            status: 'UP',
            zones: zones.map((z) => `${base}/zones/${z}`),
            quotas: Object.entries(quotas).map(([metric, limit]) => ({ metric, limit, usage: usage(metric) })),
            selfLink: `${base}/regions/${region}`,
            supportsPzs: false,
          };
        },
      };
    if (a === 'global' && b === 'firewalls') {
      if (method === 'POST' && c === undefined)
        return {
          name: 'firewalls.insert',
          run: () => {
            const name = String(body['name'] ?? '');
            if (!NAME_RE.test(name)) throw new HttpError(400, 'invalid', `Invalid value for field 'resource.name': '${name}'`);
            if (firewalls.has(name)) throw new HttpError(409, 'alreadyExists', `The resource 'projects/${project}/global/firewalls/${name}' already exists`);
            if (!Array.isArray(body['allowed']) || body['allowed'].length === 0) throw new HttpError(400, 'invalid', "Invalid value for field 'resource.allowed'");
            const selfLink = `${base}/global/firewalls/${name}`;
            const fw = { priority: 1000, direction: 'INGRESS', disabled: false, ...body, kind: 'compute#firewall', id: id(), creationTimestamp: now(), selfLink };
            return newOperation('global', undefined, 'insert', selfLink, () => {
              firewalls.set(name, fw);
              return undefined;
            });
          },
        };
      if (method === 'GET' && c === undefined)
        return {
          name: 'firewalls.list',
          run: () => {
            const m = matcher(q.get('filter'));
            return {
              kind: 'compute#firewallList',
              id: `projects/${project}/global/firewalls`,
              selfLink: `${base}/global/firewalls`,
              ...page([...firewalls.values()].filter(m), q),
            };
          },
        };
      if (c && (method === 'GET' || method === 'DELETE'))
        return {
          name: `firewalls.${method === 'GET' ? 'get' : 'delete'}`,
          run: () => {
            const fw = firewalls.get(c);
            if (!fw) throw new HttpError(404, 'notFound', `The resource 'projects/${project}/global/firewalls/${c}' was not found`);
            if (method === 'GET') return fw;
            return newOperation('global', undefined, 'delete', String(fw['selfLink']), () => {
              firewalls.delete(c);
              return undefined;
            });
          },
        };
    }
    return undefined;
  }

  const sendJson = (res: ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8' }).end(JSON.stringify(body));
  };
  const sendError = (res: ServerResponse, err: HttpError) =>
    sendJson(res, err.status, { error: { code: err.status, message: err.message, errors: [{ message: err.message, domain: 'global', reason: err.reason }] } });

  const api: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        const url = new URL(req.url ?? '/', 'http://fake');
        if (req.headers.authorization !== `Bearer ${token}`) {
          sendError(res, new HttpError(401, 'required', 'Request is missing required authentication credential. Expected OAuth 2 access token.'));
          return;
        }
        let body: Record<string, unknown> = {};
        try {
          if (chunks.length) body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
        } catch {
          sendError(res, new HttpError(400, 'parseError', 'Parse Error'));
          return;
        }
        const r = route(req.method ?? 'GET', url.pathname, url.searchParams, body);
        if (!r) {
          sendError(res, new HttpError(404, 'notFound', `The GCE fake does not implement ${req.method} ${url.pathname}`));
          return;
        }
        calls.push(`${req.method} ${r.name}`);
        try {
          sendJson(res, 200, await r.run());
        } catch (err) {
          if (err instanceof HttpError) sendError(res, err);
          else sendError(res, new HttpError(500, 'backendError', (err as Error).message));
        }
      })();
    });
  });

  function metadataBody(key: string, path: string): string | undefined {
    const i = instances.get(key);
    if (!i) return undefined;
    const zone = key.split('/')[0]!;
    const items = ((i['metadata'] as { items?: Array<{ key: string; value: string }> } | undefined)?.items ?? []) as Array<{ key: string; value: string }>;
    const p = path.replace(/^\/computeMetadata\/v1\//, '');
    if (p === 'instance/id') return String(i['id']);
    if (p === 'instance/name' || p === 'instance/hostname') return String(i['name']);
    if (p === 'instance/zone') return `projects/${project}/zones/${zone}`;
    if (p === 'instance/machine-type') return `projects/${project}/machineTypes/${String(i['machineType']).split('/').pop()}`;
    if (p === 'instance/preempted') return preempted.has(key) ? 'TRUE' : 'FALSE';
    if (p === 'instance/maintenance-event') return 'NONE';
    if (p === 'instance/network-interfaces/0/ip') return String((i['networkInterfaces'] as Array<{ networkIP: string }>)[0]!.networkIP);
    if (p === 'project/project-id') return project;
    if (p === 'instance/attributes/') return items.map((x) => x.key).join('\n') + '\n';
    if (p.startsWith('instance/attributes/')) return items.find((x) => x.key === p.slice('instance/attributes/'.length))?.value;
    return undefined;
  }

  async function bootMetadata(instanceId: string): Promise<string> {
    if (!instances.has(instanceId)) throw new Error(`GCE fake: no instance ${instanceId}`);
    const server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://metadata');
      if (req.headers['metadata-flavor'] !== 'Google') {
        res.writeHead(403, { 'content-type': 'text/html' }).end('Missing Metadata-Flavor:Google header.');
        return;
      }
      if (req.method !== 'GET') {
        res.writeHead(405).end();
        return;
      }
      const b = metadataBody(instanceId, url.pathname);
      if (b === undefined) {
        res.writeHead(404, { 'metadata-flavor': 'Google' }).end('not found');
        return;
      }
      res.writeHead(200, { 'metadata-flavor': 'Google', 'content-type': 'application/text' }).end(b);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    metadataServers.set(instanceId, server);
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async function stopMetadata(key: string): Promise<void> {
    const s = metadataServers.get(key);
    if (!s) return;
    metadataServers.delete(key);
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;

  const authClient: StaticTokenAuthClient = {
    universeDomain: 'googleapis.com',
    getRequestHeaders: () => Promise.resolve(new Headers({ authorization: `Bearer ${token}` })),
    fetch: (url, init = {}) => {
      const headers = new Headers(init.headers);
      headers.set('authorization', `Bearer ${token}`);
      return fetch(url, { ...init, headers });
    },
  };

  return {
    endpoint,
    authClient,
    project,
    region,
    zones,
    token,
    calls,
    instances: () => [...instances.values()],
    firewalls: () => [...firewalls.values()],
    failInserts(rule) {
      faults.add(rule);
      return () => void faults.delete(rule);
    },
    setQuota(metric, limit) {
      quotas[metric] = limit;
    },
    bootMetadata,
    preempt(instanceId, deleteAfterMs = 30_000) {
      const rec = instances.get(instanceId);
      if (!rec) throw new Error(`GCE fake: no instance ${instanceId}`);
      if ((rec['scheduling'] as { provisioningModel?: string }).provisioningModel !== 'SPOT') throw new Error(`GCE fake: ${instanceId} is not a Spot VM`);
      preempted.add(instanceId);
      const t = setTimeout(() => {
        timers.delete(t);
        if (instances.get(instanceId) === rec) {
          instances.delete(instanceId);
          void stopMetadata(instanceId);
        }
      }, deleteAfterMs);
      timers.add(t);
    },
    async stop() {
      for (const t of timers) clearTimeout(t);
      await Promise.all([...metadataServers.keys()].map((k) => stopMetadata(k)));
      api.closeAllConnections();
      await new Promise<void>((r) => api.close(() => r()));
    },
  };
}
