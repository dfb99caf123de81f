import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, rmSync, statSync, lstatSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { readFile, rm, writeFile, rename, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { RegistryAuth } from './auth.js';
import { PullError } from './errors.js';
import { checkManifestType, hostPlatform, isIndex, layerInfos, parseConfig, parseManifest, selectPlatform, type ImageConfig, type LayerInfo, type Platform } from './image.js';
import { formatReference, parseReference, type Reference } from './reference.js';
import { DEFAULT_TRANSPORT, DispatcherPool, sha256Digest, TokenCache, type TransportOptions } from './registry.js';
import { withShorthands, type RegistryConfig } from './registry-config.js';
import { MirroredSource, type ImageSource } from './source.js';
import { GC_LOCK_MS, Store } from './store.js';
import { CHUNK } from './decompress.js';
import { FollowReader, Progress } from './follow.js';
import { TreeState, UnpackBudget, unpackLayer, type UnpackOptions, type UnpackResult } from './unpack.js';

export interface PulledImage {
  reference: string;
  digest: string;
  configDigest: string;
  config: ImageConfig;
  layerDirs: string[];
  architecture: string;
  os: string;
}

export interface ImagePullerOptions {
  root: string;
  /** Per-registry TLS, mirrors and rewrites (parseRegistryConfig / loadRegistryConfig). */
  registries?: RegistryConfig;
  /** Shorthand: these hosts speak plain HTTP. */
  plainHttp?: string[];
  /** Shorthand: these hosts' certificates are not verified. */
  insecure?: string[];
  platform?: Platform;
  logger?: Logger;
  /** Largest uncompressed size of one layer (default 32 GiB): a bound for decompression bombs. */
  maxLayerBytes?: number;
  /**
   * Most bytes one pull may unpack for an image, all layers together (default 64 GiB): tar
   * streams plus files copied up, so an image cannot fill the cell's disk.
   */
  maxImageBytes?: number;
  /**
   * Most files, directories and links one pull may create for an image (default 2,000,000, the
   * inodes of a 32 GiB ext4 at its default ratio): an image cannot exhaust the cell's inodes.
   */
  maxImageEntries?: number;
  /** Retries, backoff and deadlines of registry requests. */
  transport?: Partial<TransportOptions>;
  /** Layer downloads in flight at once (default 4). */
  concurrency?: number;
}

export interface PullProgress {
  layer: string;
  done: number;
  total: number;
}

export interface PullOptions {
  auth?: (registry: string) => RegistryAuth | undefined;
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
}

/** What `pull` and `pullToRootfs` report beyond PulledImage (for the CLI's --json). */
export interface PullStats {
  layers: number;
  downloadedBytes: number;
  fetchedLayers: number;
  unpackedLayers: number;
}

interface ImageRecord {
  reference: string;
  digest: string;
  configDigest: string;
  config: ImageConfig;
  layers: LayerInfo[];
  architecture: string;
  os: string;
  /** Other manifests (an index) that this image was reached through; kept by gc with it. */
  via: string[];
}

interface Resolved {
  ref: Reference;
  record: ImageRecord;
  client: ImageSource;
}

class Semaphore {
  private n: number;
  private readonly waiters: (() => void)[] = [];
  constructor(n: number) {
    this.n = n;
  }
  async acquire(): Promise<() => void> {
    if (this.n > 0) this.n--;
    else await new Promise<void>((r) => this.waiters.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const w = this.waiters.shift();
      if (w) w();
      else this.n++;
    };
  }
}

/** Everything of an image in the cache: its blobs' digests and its layers' ChainIDs. */
function imageItems(r: ImageRecord): string[] {
  return [r.digest, r.configDigest, ...r.via, ...r.layers.flatMap((l) => [l.digest, l.chainId])];
}

function recordKey(ref: string): string {
  return createHash('sha256').update(ref).digest('hex');
}

function toPulled(r: ImageRecord, layerDirs: string[]): PulledImage {
  return { reference: r.reference, digest: r.digest, configDigest: r.configDigest, config: r.config, layerDirs, architecture: r.architecture, os: r.os };
}

function du(path: string): number {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return 0;
  }
  if (!st.isDirectory()) return st.size;
  let n = 0;
  for (const e of readdirSync(path)) n += du(join(path, e));
  return n;
}

/**
 * Pulls images from OCI/Docker registries into a verified, content-addressed cache and unpacks
 * their layers, either as overlayfs lower dirs (shared between images) or onto a root filesystem.
 */
export class ImagePuller {
  private readonly store: Store;
  private readonly tokens = new TokenCache();
  private readonly dispatchers = new DispatcherPool();
  private registries: RegistryConfig;
  private readonly platform: Platform;
  private readonly transport: TransportOptions;
  private readonly maxLayerBytes: number;
  private readonly maxImageBytes: number;
  private readonly maxImageEntries: number;
  private readonly downloads: Semaphore;
  private readonly unpacks = new Semaphore(2);
  private readonly blobFlights = new Map<string, Promise<void>>();
  /** Downloads under way in this process, so unpacking can follow them as bytes arrive. */
  private readonly progress = new Map<string, Promise<Progress | undefined>>();
  private readonly layerFlights = new Map<string, Promise<string>>();
  private readonly log: Logger | undefined;
  private swept = false;

  constructor(private readonly opts: ImagePullerOptions) {
    if (!opts || typeof opts.root !== 'string' || opts.root === '') throw new PullError('invalid', 'ImagePuller: options.root (the cache directory) is required');
    this.store = new Store(opts.root);
    this.platform = opts.platform ?? hostPlatform();
    this.transport = { ...DEFAULT_TRANSPORT, ...opts.transport };
    this.maxLayerBytes = opts.maxLayerBytes ?? 32 * 2 ** 30;
    this.maxImageBytes = opts.maxImageBytes ?? 64 * 2 ** 30;
    this.maxImageEntries = opts.maxImageEntries ?? 2_000_000;
    for (const k of ['maxLayerBytes', 'maxImageBytes', 'maxImageEntries'] as const) {
      if (!Number.isSafeInteger(this[k]) || this[k] <= 0) throw new PullError('invalid', `ImagePuller: options.${k} must be a positive integer, got ${String(opts[k])}`);
    }
    this.downloads = new Semaphore(opts.concurrency ?? 4);
    this.log = opts.logger;
    this.registries = withShorthands(this.opts.registries ?? {}, { plainHttp: this.opts.plainHttp ?? [], skipVerify: this.opts.insecure ?? [] });
  }

  /**
   * Replaces the per-registry configuration for pulls that start from now on (those under way
   * finish as they began). The plainHttp/insecure shorthands of the options still apply.
   */
  setRegistries(registries: RegistryConfig): void {
    this.registries = withShorthands(registries, { plainHttp: this.opts.plainHttp ?? [], skipVerify: this.opts.insecure ?? [] });
  }

  /** Closes pooled registry connections (optional; idle sockets do not keep the process alive). */
  async close(): Promise<void> {
    await this.dispatchers.close();
  }

  private sweepOnce(): void {
    if (this.swept) return;
    this.swept = true;
    this.store.sweepTmp();
  }

  private client(ref: Reference, opts: PullOptions): ImageSource {
    return new MirroredSource(ref.registry, ref.repository, {
      registries: this.registries,
      dispatchers: this.dispatchers,
      tokens: this.tokens,
      transport: this.transport,
      auth: opts.auth,
      logger: this.log,
      signal: opts.signal,
    });
  }

  /** Manifest (through an index if need be) and config: everything but the layers. */
  private async resolve(refStr: string, opts: PullOptions): Promise<Resolved> {
    const ref = parseReference(refStr);
    const name = formatReference(ref);
    const client = this.client(ref, opts);
    const via: string[] = [];
    let m = await client.getManifest(ref.digest ?? ref.tag!, ref.digest);
    checkManifestType(m.mediaType, name);
    if (isIndex(m.mediaType)) {
      const desc = selectPlatform(m.bytes, this.platform, name);
      await this.store.writeBlob(m.digest, m.bytes);
      via.push(m.digest);
      m = await client.getManifest(desc.digest, desc.digest);
      checkManifestType(m.mediaType, `${name} (${desc.digest})`);
      if (isIndex(m.mediaType)) throw new PullError('unsupported', `${name}: nested image indexes are not supported`);
    }
    const manifest = parseManifest(m.bytes, m.mediaType, name);
    let cfgBytes = await this.store.readBlob(manifest.config.digest);
    if (!cfgBytes || sha256Digest(cfgBytes) !== manifest.config.digest) {
      cfgBytes = await client.getBlob(manifest.config.digest);
      await this.store.writeBlob(manifest.config.digest, cfgBytes);
    }
    const cfg = parseConfig(cfgBytes, `${name} config`);
    await this.store.writeBlob(m.digest, m.bytes);
    const record: ImageRecord = {
      reference: name,
      digest: m.digest,
      configDigest: manifest.config.digest,
      config: cfg.config,
      layers: layerInfos(manifest, cfg, name),
      architecture: cfg.architecture,
      os: cfg.os,
      via,
    };
    return { ref, record, client };
  }

  private async saveRecord(r: Resolved): Promise<void> {
    const body = JSON.stringify(r.record);
    const byDigest = formatReference({ registry: r.ref.registry, repository: r.ref.repository, digest: r.record.digest });
    for (const key of new Set([r.record.reference, byDigest])) {
      const tmp = this.store.tmpPath('rec');
      await writeFile(tmp, body);
      await rename(tmp, join(this.store.images, `${recordKey(key)}.json`));
    }
  }

  /** Downloads one blob into the cache once, however many pulls (or processes) want it. */
  private ensureBlob(client: ImageSource, l: LayerInfo, opts: PullOptions, stats: PullStats): Promise<void> {
    const complete = (): void => opts.onProgress?.({ layer: l.digest, done: l.size, total: l.size });
    if (this.store.hasBlob(l.digest)) {
      complete();
      return Promise.resolve();
    }
    let p = this.blobFlights.get(l.digest);
    if (!p) {
      let resolveStarted!: (p: Progress | undefined) => void;
      const started = new Promise<Progress | undefined>((r) => (resolveStarted = r));
      this.progress.set(l.digest, started);
      p = (async () => {
        const release = await this.downloads.acquire();
        try {
          await this.store.withLock(
            `blob-${l.digest.slice(7)}`,
            async () => {
              if (this.store.hasBlob(l.digest)) return complete(); // another process fetched it
              const tmp = this.store.tmpPath('download');
              const prog = new Progress(tmp);
              try {
                opts.onProgress?.({ layer: l.digest, done: 0, total: l.size });
                await client.fetchBlobToFile(l.digest, l.size, tmp, (done) => {
                  if (done > 0 && prog.written === 0) resolveStarted(prog);
                  prog.update(done);
                  opts.onProgress?.({ layer: l.digest, done, total: l.size });
                });
                this.store.commitBlob(tmp, l.digest);
                prog.finish();
                stats.downloadedBytes += l.size;
                stats.fetchedLayers++;
              } catch (err) {
                prog.finish(err);
                await rm(tmp, { force: true });
                throw err;
              }
            },
            undefined,
            opts.signal,
          );
        } finally {
          release();
          resolveStarted(undefined);
        }
      })().finally(() => {
        this.blobFlights.delete(l.digest);
        this.progress.delete(l.digest);
      });
      this.blobFlights.set(l.digest, p);
    } else {
      // Another pull is fetching it; still report its completion to this caller.
      p = p.then(complete);
    }
    return p;
  }

  /**
   * The layer blob as a stream: from the cache, or following its download in this process as
   * bytes arrive. `fetched` settles when the blob is in the cache, verified.
   */
  private async openBlob(l: LayerInfo, fetched: Promise<void>): Promise<Readable> {
    if (!this.store.hasBlob(l.digest)) {
      const prog = await this.progress.get(l.digest);
      if (prog && !prog.error) return new FollowReader(prog);
      await fetched;
    }
    return createReadStream(this.store.blobPath(l.digest), { highWaterMark: CHUNK });
  }

  /**
   * Unpacks from the stream (possibly a download in progress); if the download fails or restarts
   * under us, waits for the verified blob and unpacks again from the cache, so only a failed
   * download fails the layer.
   */
  private async unpackBlob(l: LayerInfo, fetched: Promise<void>, dir: string, o: Omit<UnpackOptions, 'dir'>, reset: () => Promise<void>): Promise<UnpackResult> {
    const src = await this.openBlob(l, fetched);
    try {
      const res = await unpackLayer(src, l.compression, l.diffId, { ...o, dir, hashOffThread: src instanceof FollowReader });
      await fetched; // the compressed digest is verified too before anything is published
      return res;
    } catch (err) {
      if (!(src instanceof FollowReader)) throw err;
      await fetched; // a failed download is the real error
      if (err instanceof PullError && err.kind === 'unsafe-content') throw err;
      await reset();
      return unpackLayer(createReadStream(this.store.blobPath(l.digest), { highWaterMark: CHUNK }), l.compression, l.diffId, { ...o, dir });
    }
  }

  /** Unpacks layer i (overlay form) into layers/CHAINID, once. */
  private budget(): UnpackBudget {
    return new UnpackBudget(this.maxImageBytes, this.maxImageEntries);
  }

  private ensureLayer(
    r: Resolved,
    i: number,
    lowerDirs: () => Promise<string[]>,
    turn: Promise<void>,
    opts: PullOptions,
    stats: PullStats,
    budget: UnpackBudget,
  ): { started: Promise<void>; done: Promise<string> } {
    const l = r.record.layers[i]!;
    const final = this.store.layerPath(l.chainId);
    let markStarted!: () => void;
    const started = new Promise<void>((res) => (markStarted = res));
    if (existsSync(final)) {
      markStarted();
      return { started, done: Promise.resolve(final) };
    }
    let p = this.layerFlights.get(l.chainId);
    if (p) {
      markStarted();
      return { started, done: p };
    }
    p = (async () => {
      const fetched = this.ensureBlob(r.client, l, opts, stats);
      fetched.catch(() => undefined);
      try {
        await turn; // start unpacks bottom-first, so a waiting upper layer never holds a slot a lower one needs
      } finally {
        markStarted();
      }
      const release = await this.unpacks.acquire();
      try {
        return await this.store.withLock(
          `layer-${l.chainId.slice(7)}`,
          async () => {
            if (existsSync(final)) return final;
            const tmp = this.store.tmpPath('layer');
            mkdirSync(tmp, { mode: 0o755 });
            try {
              const t0 = Date.now();
              const o = { mode: 'overlay' as const, state: new TreeState(true), maxBytes: this.maxLayerBytes, budget, lowerDirs, logger: this.log, signal: opts.signal };
              const res = await this.unpackBlob(l, fetched, tmp, o, async () => {
                await rm(tmp, { recursive: true, force: true });
                mkdirSync(tmp, { mode: 0o755 });
                o.state = new TreeState(true);
              });
              await this.store.commitLayer(tmp, l.chainId);
              stats.unpackedLayers++;
              this.log?.debug({ layer: l.digest, bytes: res.bytes, ms: Date.now() - t0 }, 'layer unpacked');
              return final;
            } catch (err) {
              await rm(tmp, { recursive: true, force: true });
              throw err;
            }
          },
          undefined,
          opts.signal,
        );
      } finally {
        release();
      }
    })().finally(() => this.layerFlights.delete(l.chainId));
    this.layerFlights.set(l.chainId, p);
    return { started, done: p };
  }

  /** Resolves a reference to its manifest, config and layer list without fetching layers. */
  async inspect(
    ref: string,
    opts: PullOptions = {},
  ): Promise<{ reference: string; digest: string; configDigest: string; config: ImageConfig; architecture: string; os: string; layers: LayerInfo[] }> {
    const { record } = await this.resolve(ref, opts);
    return {
      reference: record.reference,
      digest: record.digest,
      configDigest: record.configDigest,
      config: record.config,
      architecture: record.architecture,
      os: record.os,
      layers: record.layers,
    };
  }

  /** Fetches the image and unpacks its layers as overlayfs lower dirs; idempotent and safe to run concurrently. */
  async pull(ref: string, opts: PullOptions = {}): Promise<PulledImage> {
    return (await this.pullWithStats(ref, opts)).image;
  }

  async pullWithStats(ref: string, opts: PullOptions = {}): Promise<{ image: PulledImage; stats: PullStats }> {
    this.sweepOnce();
    const r = await this.resolve(ref, opts);
    return this.store.withLease(imageItems(r.record), () => this.pullLayers(r, opts), opts.signal);
  }

  private async pullLayers(r: Resolved, opts: PullOptions): Promise<{ image: PulledImage; stats: PullStats }> {
    const stats: PullStats = { layers: r.record.layers.length, downloadedBytes: 0, fetchedLayers: 0, unpackedLayers: 0 };
    const dones: Promise<string>[] = [];
    let turn: Promise<void> = Promise.resolve();
    const budget = this.budget();
    for (let i = 0; i < r.record.layers.length; i++) {
      const below = dones.slice();
      const lowerDirs = async () => (await Promise.all(below)).reverse();
      const { started, done } = this.ensureLayer(r, i, lowerDirs, turn, opts, stats, budget);
      turn = started;
      const l = r.record.layers[i]!;
      // Every layer ends at 100%, also when cached or fetched by a concurrent pull.
      dones.push(done.then((d) => (opts.onProgress?.({ layer: l.digest, done: l.size, total: l.size }), d)));
    }
    const settled = await Promise.allSettled(dones);
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
    const layerDirs = settled.map((s) => (s as PromiseFulfilledResult<string>).value);
    await this.saveRecord(r);
    this.log?.info({ ref: r.record.reference, digest: r.record.digest, ...stats }, 'image pulled');
    return { image: toPulled(r.record, layerDirs), stats };
  }

  /**
   * Fetches the image and applies its layers, in order, onto `dir` (a flattened root filesystem);
   * later layers download while earlier ones are applied. No per-layer dirs are made.
   */
  async pullToRootfs(ref: string, dir: string, opts: PullOptions = {}): Promise<{ image: PulledImage; stats: PullStats }> {
    this.sweepOnce();
    const r = await this.resolve(ref, opts);
    return this.store.withLease(
      imageItems(r.record),
      async () => {
        const stats: PullStats = { layers: r.record.layers.length, downloadedBytes: 0, fetchedLayers: 0, unpackedLayers: 0 };
        const fetches = r.record.layers.map((l) => this.ensureBlob(r.client, l, opts, stats));
        fetches.forEach((f) => f.catch(() => undefined));
        await this.applyLayers(r.record, dir, fetches, opts.signal, stats);
        await this.saveRecord(r);
        return { image: toPulled(r.record, []), stats };
      },
      opts.signal,
    );
  }

  private async applyLayers(rec: ImageRecord, dir: string, ready: Promise<void>[], signal: AbortSignal | undefined, stats?: PullStats): Promise<void> {
    await mkdir(dir, { recursive: true });
    const state = TreeState.forDir(dir);
    const budget = this.budget();
    for (let i = 0; i < rec.layers.length; i++) {
      const l = rec.layers[i]!;
      const o = { mode: 'apply' as const, state, maxBytes: this.maxLayerBytes, budget, logger: this.log, signal };
      // Applying a layer again over a partial application of itself converges to the same tree,
      // so a followed download that restarted is simply applied again from the cache.
      await this.unpackBlob(l, ready[i]!, dir, o, async () => undefined);
      if (stats) stats.unpackedLayers++;
    }
  }

  private async readRecord(ref: string): Promise<ImageRecord | undefined> {
    const r = parseReference(ref);
    const key = r.digest ? formatReference({ registry: r.registry, repository: r.repository, digest: r.digest }) : formatReference(r);
    try {
      return JSON.parse(await readFile(join(this.store.images, `${recordKey(key)}.json`), 'utf8')) as ImageRecord;
    } catch {
      return undefined;
    }
  }

  /** The image as last pulled, if every layer is still unpacked; never touches the network. */
  async cached(ref: string): Promise<PulledImage | undefined> {
    const rec = await this.readRecord(ref);
    if (!rec) return undefined;
    const dirs = rec.layers.map((l) => this.store.layerPath(l.chainId));
    if (!dirs.every((d) => existsSync(d))) return undefined;
    return toPulled(rec, dirs);
  }

  /** Writes the flattened root filesystem of a pulled image into `dir` (from the cached blobs). */
  async unpackRootfs(image: PulledImage, dir: string): Promise<void> {
    const rec = await this.readRecord(image.reference.includes('@') ? image.reference : `${image.reference.replace(/:[^/:]+$/, '')}@${image.digest}`);
    if (!rec || rec.digest !== image.digest) throw new PullError('not-found', `${image.reference}: not in the cache; pull it first`);
    await this.store.withLease(imageItems(rec), async () => {
      const missing = rec.layers.find((l) => !this.store.hasBlob(l.digest));
      if (missing) throw new PullError('not-found', `${image.reference}: layer blob ${missing.digest} is no longer cached; pull it again`);
      await this.applyLayers(
        rec,
        dir,
        rec.layers.map(() => Promise.resolve()),
        undefined,
      );
    });
  }

  /** Removes images not named in `keep` (references or digests), then every blob and layer none of the kept ones uses. */
  async gc(keep: string[]): Promise<{ removedBytes: number }> {
    this.sweepOnce();
    // Under the gc lock, so no pull in any process can lease something while it is being removed.
    return this.store.withLock('gc', () => this.collect(keep), GC_LOCK_MS);
  }

  private async collect(keep: string[]): Promise<{ removedBytes: number }> {
    const keepRefs = new Set<string>();
    const keepDigests = new Set<string>();
    for (const k of keep) {
      if (/^sha256:[a-f0-9]{64}$/.test(k)) keepDigests.add(k);
      else {
        const r = parseReference(k);
        keepRefs.add(formatReference(r));
        if (r.digest) keepDigests.add(r.digest);
      }
    }
    // What stays, by hex name: kept images, leases of running pulls in any process, and this
    // process's own transfers. One set serves blobs and layers: a blob digest equals a ChainID
    // only for an uncompressed base layer (its blob is its DiffID), and then keeping both is safe.
    const inUse = this.store.leased();
    for (const d of [...this.blobFlights.keys(), ...this.layerFlights.keys()]) inUse.add(d.slice(7));
    let removedBytes = 0;
    for (const f of readdirSync(this.store.images)) {
      const path = join(this.store.images, f);
      let rec: ImageRecord;
      try {
        rec = JSON.parse(await readFile(path, 'utf8')) as ImageRecord;
      } catch {
        rmSync(path, { force: true });
        continue;
      }
      const kept = keepRefs.has(rec.reference) || keepDigests.has(rec.digest);
      if (!kept) {
        removedBytes += statSync(path).size;
        rmSync(path, { force: true });
        continue;
      }
      for (const d of imageItems(rec)) inUse.add(d.slice(7));
    }
    for (const b of readdirSync(this.store.blobs)) {
      if (inUse.has(b)) continue;
      removedBytes += du(join(this.store.blobs, b));
      rmSync(join(this.store.blobs, b), { force: true });
    }
    for (const l of readdirSync(this.store.layers)) {
      if (inUse.has(l)) continue;
      const p = join(this.store.layers, l);
      removedBytes += du(p);
      // Rename first, so a half-deleted layer is never mistaken for a complete one.
      const doomed = this.store.tmpPath('gc');
      await rename(p, doomed);
      await rm(doomed, { recursive: true, force: true });
    }
    return { removedBytes };
  }
}
