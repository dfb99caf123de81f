#!/usr/bin/env node
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { pino } from 'pino';
import { dockerConfigAuth, type RegistryAuth } from './auth.js';
import { EXIT_CODES, PullError } from './errors.js';
import { parsePlatform } from './image.js';
import { ImagePuller, type PullOptions } from './puller.js';
import { parseReference } from './reference.js';
import { loadRegistryConfig } from './registry-config.js';

function defaultCache(): string {
  if (process.env.CELLO_IMAGE_CACHE) return process.env.CELLO_IMAGE_CACHE;
  return process.getuid?.() === 0 ? '/var/cache/cello/images' : join(homedir(), '.cache', 'cello', 'images');
}

interface Common {
  cache: string;
  platform?: string;
  plainHttp?: boolean;
  insecure?: boolean;
  registryConfig?: string;
  username?: string;
  passwordStdin?: boolean;
  verbose?: boolean;
  maxImageBytes?: number;
  maxImageEntries?: number;
}

/** A count, or bytes with an optional binary suffix (K, M, G, T: KiB .. TiB). */
function positive(flag: string, sizes: boolean): (v: string) => number {
  return (v) => {
    const m = (sizes ? /^(\d+)([KMGT]i?B?)?$/i : /^(\d+)()$/).exec(v.trim());
    const n = m ? Number(m[1]) * 1024 ** (m[2] ? 'KMGT'.indexOf(m[2][0]!.toUpperCase()) + 1 : 0) : NaN;
    if (!Number.isSafeInteger(n) || n <= 0) throw new PullError('invalid', `${flag}: expected a positive ${sizes ? 'size (e.g. 64G)' : 'integer'}, got ${JSON.stringify(v)}`);
    return n;
  };
}

function makePuller(ref: string, o: Common): ImagePuller {
  const { registry } = parseReference(ref);
  const logger = pino({ level: o.verbose ? 'debug' : 'warn', redact: ['*.password', '*.authorization', '*.identityToken', '*.keyPem'] }, pino.destination(2));
  return new ImagePuller({
    root: resolve(o.cache),
    registries: o.registryConfig ? loadRegistryConfig(o.registryConfig) : {},
    plainHttp: o.plainHttp ? [registry] : [],
    insecure: o.insecure ? [registry] : [],
    ...(o.platform ? { platform: parsePlatform(o.platform) } : {}),
    ...(o.maxImageBytes ? { maxImageBytes: o.maxImageBytes } : {}),
    ...(o.maxImageEntries ? { maxImageEntries: o.maxImageEntries } : {}),
    logger,
  });
}

async function credentials(ref: string, o: Common): Promise<PullOptions['auth']> {
  const { registry } = parseReference(ref);
  let auth: RegistryAuth | undefined;
  if (o.passwordStdin) {
    if (!o.username) throw new PullError('invalid', '--password-stdin needs --username');
    const pw = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
    auth = { username: o.username, password: pw };
  } else if (o.username) {
    throw new PullError('invalid', '--username needs --password-stdin (passwords are never taken from the command line)');
  } else {
    auth = await dockerConfigAuth(registry);
  }
  return (r) => (r === registry ? auth : undefined);
}

/** One line per layer, redrawn in place; only on a TTY. */
function progressBars(): { onProgress: PullOptions['onProgress']; stop: () => void } | undefined {
  if (!process.stderr.isTTY) return undefined;
  const rows = new Map<string, { done: number; total: number }>();
  let drawn = 0;
  let timer: NodeJS.Timeout | undefined;
  const draw = (): void => {
    timer = undefined;
    const width = 30;
    let out = drawn > 0 ? `\x1b[${drawn}A` : '';
    for (const [layer, p] of rows) {
      const f = p.total > 0 ? Math.min(1, p.done / p.total) : 1;
      const bar = '#'.repeat(Math.round(f * width)).padEnd(width, '.');
      out += `\x1b[2K${layer.slice(7, 19)} [${bar}] ${(p.done / 1048576).toFixed(1)}/${(p.total / 1048576).toFixed(1)} MiB\n`;
    }
    drawn = rows.size;
    process.stderr.write(out);
  };
  return {
    onProgress: (p) => {
      rows.set(p.layer, { done: p.done, total: p.total });
      timer ??= setTimeout(draw, 100);
    },
    stop: () => {
      if (timer) clearTimeout(timer);
      if (rows.size) draw();
    },
  };
}

const program = new Command('image-puller')
  .description(
    'Pull OCI/Docker images from a registry into a verified cache and unpack them safely,\n' + 'as a flattened root filesystem (--rootfs) or as overlayfs lower dirs (--layers).',
  )
  .showHelpAfterError()
  .addHelpText(
    'after',
    `
Examples:
  image-puller pull busybox --rootfs /tmp/rootfs
  image-puller pull 127.0.0.1:5000/app:1.0 --plain-http --layers /tmp/app --json
  echo "$TOKEN" | image-puller pull registry.example.com/team/app --username me --password-stdin --rootfs /srv/app
  image-puller inspect docker.io/library/debian:bookworm --platform linux/arm64/v8
  image-puller pull registry.internal:5443/app:1.0 --registry-config registries.yaml --rootfs /tmp/app
  image-puller gc --keep busybox --keep 127.0.0.1:5000/app:1.0

Credentials: --username with --password-stdin, else Docker's config.json ($DOCKER_CONFIG or ~/.docker:
auths, credHelpers, credsStore). They never appear in logs, errors or argv.

Exit codes: 0 ok, ${EXIT_CODES['not-found']} not found, ${EXIT_CODES.auth} auth, ${EXIT_CODES.network} network, ${EXIT_CODES.integrity} integrity, ${EXIT_CODES['unsafe-content']} unsafe content, ${EXIT_CODES.invalid} invalid input, ${EXIT_CODES.unsupported} unsupported, 1 other.
Cache: --cache, else $CELLO_IMAGE_CACHE, else ${defaultCache()}.`,
  );

function common(c: Command): Command {
  return c
    .addOption(new Option('--cache <dir>', 'cache directory (blobs, unpacked layers, image index)').default(defaultCache()))
    .option('--platform <os/arch[/variant]>', 'platform to select from a multi-platform image (default: this host)')
    .option('--plain-http', "speak plain HTTP to the reference's registry")
    .option('--insecure', "do not verify the registry's TLS certificate")
    .option('--registry-config <file>', 'per-registry CAs, client certificates, mirrors and rewrites (JSON or YAML with a "registries:" map; docs/registries.md)')
    .option('--username <user>', 'registry user name (with --password-stdin)')
    .option('--password-stdin', 'read the registry password or token from standard input')
    .option('-v, --verbose', 'debug logs (JSON, on stderr)');
}

common(
  program
    .command('pull')
    .argument('<ref>', 'image reference, e.g. busybox, 127.0.0.1:5000/app:1.0, repo@sha256:...')
    .description('fetch an image and unpack it')
    .option('--rootfs <dir>', 'write the flattened root filesystem here')
    .option('--layers <dir>', 'make DIR/0..N-1 links to the cached overlay layer dirs (bottom first) and DIR/lowerdir')
    .option('--config-out <file>', 'write the image config (entrypoint, cmd, env, ...) as JSON here')
    .option('--json', 'print a JSON summary (digest, layers, bytes, seconds) on stdout')
    .option('--max-image-bytes <size>', 'most bytes the image may unpack to, all layers together (default 64G)', positive('--max-image-bytes', true))
    .option('--max-image-entries <n>', 'most files, directories and links the image may create (default 2000000)', positive('--max-image-entries', false)),
).action(async (ref: string, o: Common & { rootfs?: string; layers?: string; configOut?: string; json?: boolean }) => {
  if (!o.rootfs === !o.layers) throw new PullError('invalid', 'pull needs exactly one of --rootfs DIR or --layers DIR');
  const t0 = process.hrtime.bigint();
  const puller = makePuller(ref, o);
  const bars = o.json ? undefined : progressBars();
  const opts: PullOptions = { auth: await credentials(ref, o), ...(bars ? { onProgress: bars.onProgress } : {}) };
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  opts.signal = ac.signal;
  try {
    const { image, stats } = o.rootfs ? await puller.pullToRootfs(ref, resolve(o.rootfs), opts) : await puller.pullWithStats(ref, opts);
    bars?.stop();
    if (o.layers) {
      const dir = resolve(o.layers);
      mkdirSync(dir, { recursive: true });
      image.layerDirs.forEach((l, i) => {
        rmSync(join(dir, String(i)), { force: true });
        symlinkSync(l, join(dir, String(i)));
      });
      writeFileSync(join(dir, 'lowerdir'), `${[...image.layerDirs].reverse().join(':')}\n`);
    }
    if (o.configOut) writeFileSync(resolve(o.configOut), `${JSON.stringify(image.config, null, 2)}\n`);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({ reference: image.reference, digest: image.digest, configDigest: image.configDigest, layers: stats.layers, fetchedLayers: stats.fetchedLayers, unpackedLayers: stats.unpackedLayers, bytes: stats.downloadedBytes, seconds: Number(seconds.toFixed(3)), layerDirs: image.layerDirs })}\n`,
      );
    }
  } finally {
    await puller.close();
  }
});

common(
  program.command('inspect').argument('<ref>', 'image reference').description('print the manifest digest, platform, config and layers of an image (no layer download)'),
).action(async (ref: string, o: Common) => {
  const puller = makePuller(ref, o);
  try {
    const info = await puller.inspect(ref, { auth: await credentials(ref, o) });
    process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
  } finally {
    await puller.close();
  }
});

program
  .command('gc')
  .description('remove cached images not named by --keep, and every blob and layer only they used')
  .addOption(new Option('--cache <dir>', 'cache directory').default(defaultCache()))
  .option('--keep <ref>', 'image reference or digest to keep (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
  .option('--json', 'print {"removedBytes": N}')
  .action(async (o: { cache: string; keep: string[]; json?: boolean }) => {
    const puller = new ImagePuller({ root: resolve(o.cache) });
    const r = await puller.gc(o.keep);
    process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : `removed ${(r.removedBytes / 1048576).toFixed(1)} MiB\n`);
  });

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof PullError) {
    process.stderr.write(`image-puller: ${err.kind}: ${err.message}\n`);
    process.exit(EXIT_CODES[err.kind]);
  }
  process.stderr.write(`image-puller: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
