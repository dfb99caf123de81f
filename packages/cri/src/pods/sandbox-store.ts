// The node's record of pod sandboxes and their containers: one JSON file per sandbox under
// DIR/sandboxes (0600, directory 0700), written atomically (temporary file, fsync, rename), so a
// restarted shim finds every sandbox's cell and every container's unit again. Mutations are
// serialized; reads are from memory.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { CelloError } from '@cello/proto';

const ID = /^[a-f0-9]{64}$/;
const strings = z.record(z.string(), z.string());

const containerSchema = z.strictObject({
  id: z.string().regex(ID),
  /** The unit's name on the cell (a DNS label): `<name>-<attempt>`. */
  unit: z.string(),
  name: z.string(),
  attempt: z.number().int().nonnegative(),
  /** The image as the caller named it, and the reference the cell pulls (a repo digest when the shim knows one). */
  image: z.string(),
  imageRef: z.string(),
  imageId: z.string(),
  labels: strings,
  annotations: strings,
  logPath: z.string(),
  /** The Kubernetes v1 container the unit runs (what the cell is sent). */
  spec: z.record(z.string(), z.unknown()),
  createdAt: z.string(),
  /** created: recorded only; started: in the cell's pod; exited: stopped, or ended while the sandbox was stopped. */
  phase: z.enum(['created', 'started', 'exited']),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  exitCode: z.number().int().optional(),
  reason: z.string().optional(),
  message: z.string().optional(),
  /** The kubelet's mounts as mapped onto the cell (kubelet-mounts.ts). */
  mounts: z
    .array(
      z.strictObject({
        kind: z.enum(['content', 'emptyDir', 'hosts', 'terminationLog']),
        hostPath: z.string(),
        containerPath: z.string(),
        readonly: z.boolean(),
        volume: z.string().optional(),
        file: z.boolean().optional(),
      }),
    )
    .optional(),
});

const sandboxSchema = z.strictObject({
  version: z.literal(1),
  id: z.string().regex(ID),
  metadata: z.strictObject({ name: z.string(), uid: z.string(), namespace: z.string(), attempt: z.number().int().nonnegative() }),
  /** The Cello pod that is this sandbox (its cell is the sandbox). */
  pod: z.strictObject({ namespace: z.string(), name: z.string() }),
  hostname: z.string(),
  logDirectory: z.string(),
  dnsConfig: z.strictObject({ servers: z.array(z.string()), searches: z.array(z.string()), options: z.array(z.string()) }).optional(),
  portMappings: z.array(z.strictObject({ protocol: z.enum(['TCP', 'UDP', 'SCTP']), containerPort: z.number().int(), hostPort: z.number().int(), hostIp: z.string() })),
  labels: strings,
  annotations: strings,
  sysctls: strings,
  /** linux.security_context.privileged of the sandbox: only then may its containers be privileged. */
  privileged: z.boolean().optional(),
  /** namespace_options.pid = POD (the kubelet's shareProcessNamespace): one PID namespace for the pod's containers. */
  sharePid: z.boolean().optional(),
  createdAt: z.string(),
  state: z.enum(['ready', 'notready']),
  /** The pod IP last seen, kept for PodSandboxStatus once the cell is gone. */
  ip: z.string(),
  containers: z.array(containerSchema),
});

export type SandboxRecord = z.infer<typeof sandboxSchema>;
export type ContainerRecord = z.infer<typeof containerSchema>;

export function newId(): string {
  return randomBytes(32).toString('hex');
}

export class SandboxStore {
  private readonly dir: string;
  private readonly byId = new Map<string, SandboxRecord>();
  private chain: Promise<unknown> = Promise.resolve();

  /** Reads every record under `stateDir/sandboxes`; a record that does not parse fails the start, naming its file. */
  constructor(stateDir: string) {
    this.dir = join(stateDir, 'sandboxes');
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    for (const f of readdirSync(this.dir)) {
      const path = join(this.dir, f);
      if (f.endsWith('.tmp')) {
        rmSync(path, { force: true });
        continue;
      }
      if (!f.endsWith('.json')) continue;
      let rec: SandboxRecord;
      try {
        rec = sandboxSchema.parse(JSON.parse(readFileSync(path, 'utf8')));
      } catch (err) {
        throw new CelloError(
          'FailedPrecondition',
          `sandbox record ${path} is not valid (${(err as Error).message.slice(0, 200)}): remove it (its cell, if any, is the controller's to end)`,
        );
      }
      if (`${rec.id}.json` !== f) throw new CelloError('FailedPrecondition', `sandbox record ${path} holds sandbox ${rec.id}: its file name must be that ID`);
      this.byId.set(rec.id, rec);
    }
  }

  list(): SandboxRecord[] {
    return [...this.byId.values()];
  }

  get(id: string): SandboxRecord | undefined {
    return this.byId.get(id);
  }

  /** The container and its sandbox. */
  container(id: string): { sandbox: SandboxRecord; container: ContainerRecord } | undefined {
    for (const sandbox of this.byId.values()) {
      const container = sandbox.containers.find((c) => c.id === id);
      if (container) return { sandbox, container };
    }
    return undefined;
  }

  /** Runs `fn` alone (no other mutation interleaves), so a read-modify-write of a sandbox is whole. */
  serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Writes the record (call inside `serialized`). */
  async put(rec: SandboxRecord): Promise<void> {
    const target = join(this.dir, `${rec.id}.json`);
    const tmp = `${target}.${randomBytes(6).toString('hex')}.tmp`;
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(sandboxSchema.parse(rec), null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await rename(tmp, target);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    this.byId.set(rec.id, structuredClone(rec));
  }

  /** Forgets the sandbox (call inside `serialized`). */
  async remove(id: string): Promise<void> {
    await rm(join(this.dir, `${id}.json`), { force: true });
    this.byId.delete(id);
  }
}
