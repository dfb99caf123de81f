#!/usr/bin/env node
// `npm run package:controller-image -- --push REGISTRY/REPO:TAG`: the controller as an OCI image,
// built without Docker and pushed with the registry API; prints REGISTRY/REPO@sha256:DIGEST.
//
// One layer, no shell:
//   /opt/cello/bin/controller        `#!/opt/cello/node/bin/node` launcher (the entrypoint; also
//                                    what `kubectl exec ... -- controller backup` runs)
//   /opt/cello/node/bin/node         the official Node binary, from the npm package node-linux-ARCH
//   /opt/cello/app/bin/js/           the controller and its JS dependencies bundled by esbuild
//   /opt/cello/data/                 the instance catalogs and prices (packages/controller/data)
//   /lib, /lib64, /usr/lib           glibc, libstdc++ and libgcc from Debian's packages (apt-get
//                                    download, the machine's Debian release): Node needs them
//   /etc/passwd, /etc/group          root and nonroot (65532), the user the image runs as
// Inputs are pinned (Node by npm integrity; the .deb files are named with their versions in
// the printed manifest) and the layer is reproducible: sorted entries, numeric root owner,
// mtime SOURCE_DATE_EPOCH or the last commit's time, gzip without a timestamp.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ARCHES, fetchPinned, NODE_VERSION, untar } from './package-agent.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEBS = ['libc6', 'libstdc++6', 'libgcc-s1'];
const USER = '65532:65532';

const HELP = `Usage: node scripts/package/package-controller-image.mjs --push REGISTRY/REPO:TAG [--plain-http] [--arch amd64]

Builds the controller image (bundled Node ${NODE_VERSION}, non-root, no shell) from
packages/controller/dist (build it first: npx turbo run build --filter=@cello/controller...),
pushes it and prints REGISTRY/REPO@sha256:DIGEST for deploy/base (kustomize edit set image).
  --plain-http   the registry speaks HTTP (a local registry); default HTTPS
  --arch         amd64 (arm64 needs Debian's arm64 libraries: not built here yet)
The registry must accept anonymous pushes (a local registry; copy on with skopeo or crane).`;

function fail(msg) {
  process.stderr.write(`package-controller-image: ${msg}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const o = { push: undefined, plainHttp: false, arch: 'amd64' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      process.stdout.write(`${HELP}\n`);
      process.exit(0);
    } else if (a === '--push') o.push = argv[++i];
    else if (a === '--plain-http') o.plainHttp = true;
    else if (a === '--arch') o.arch = argv[++i];
    else fail(`unknown argument ${a}\n${HELP}`);
  }
  if (!o.push) fail(`--push REGISTRY/REPO:TAG is required\n${HELP}`);
  if (o.arch !== 'amd64') fail(`--arch ${o.arch}: only amd64 is built (Node's glibc libraries come from this machine's Debian packages)`);
  const m = /^([^/]+)\/(.+):([\w][\w.-]{0,127})$/.exec(o.push);
  if (!m) fail(`--push ${o.push}: expected REGISTRY/REPO:TAG, e.g. 127.0.0.1:5000/cello/controller:0.1.0`);
  o.registry = m[1];
  o.repo = m[2];
  o.tag = m[3];
  return o;
}

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

function gitEpoch() {
  try {
    return execFileSync('git', ['log', '-1', '--format=%ct'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return '0';
  }
}

/** Debian's runtime libraries for Node, downloaded with apt-get (cached) and unpacked into `dest`. */
function debianLibraries(dest) {
  const cache = join(process.env.CELLO_CACHE ?? '/var/cache/cello', 'deb');
  mkdirSync(cache, { recursive: true });
  const versions = {};
  for (const pkg of DEBS) {
    const version = execFileSync('dpkg-query', ['-W', '-f=${Version}', pkg], { encoding: 'utf8' }).trim();
    versions[pkg] = version;
    const have = readdirSync(cache).find((f) => f.startsWith(`${pkg}_${version.replace(':', '%3a')}_amd64.deb`));
    if (!have) execFileSync('apt-get', ['download', `${pkg}=${version}`], { cwd: cache, stdio: ['ignore', 'ignore', 'inherit'] });
    const deb = readdirSync(cache).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('_amd64.deb') && f.includes(version.replace(':', '%3a')));
    if (!deb) fail(`apt-get download ${pkg}=${version} left no .deb in ${cache}`);
    execFileSync('dpkg-deb', ['-x', join(cache, deb), dest]);
  }
  // Documentation, locales and the like: not needed to run Node.
  rmSync(join(dest, 'usr', 'share'), { recursive: true, force: true });
  return versions;
}

async function bundleController(outDir) {
  const esbuild = await import('esbuild');
  const dist = join(root, 'packages', 'controller', 'dist');
  await esbuild.build({
    // The manifest parser starts ./manifest-worker.js beside it (new URL(..., import.meta.url)).
    entryPoints: { controller: join(dist, 'bin', 'controller.js'), 'manifest-worker': join(dist, 'api', 'manifest-worker.js') },
    outdir: outDir,
    bundle: true,
    splitting: true,
    chunkNames: 'chunk-[hash]',
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // The local provider finds the agent package at run time; it is not in this image.
    external: ['@cello/cell-agent'],
    // CommonJS dependencies call require() for Node built-ins and read files beside themselves
    // (etcd3: ${__dirname}/../proto/rpc.proto); an ESM bundle has neither, so each file gets both.
    banner: {
      js:
        "import { createRequire as __celloCreateRequire } from 'node:module'; import { fileURLToPath as __celloPath } from 'node:url';" +
        ' const require = __celloCreateRequire(import.meta.url); const __filename = __celloPath(import.meta.url);' +
        " const __dirname = __celloPath(new URL('.', import.meta.url));",
    },
    legalComments: 'eof',
    logLevel: 'error',
  });
  writeFileSync(join(outDir, 'package.json'), '{ "type": "module" }\n');
}

async function registryRequest(o, method, path, body, headers = {}) {
  const url = path.startsWith('http') ? path : `${o.plainHttp ? 'http' : 'https'}://${o.registry}${path}`;
  const res = await fetch(url, { method, body, headers, redirect: 'follow', signal: AbortSignal.timeout(120_000) });
  return res;
}

async function pushBlob(o, digest, data, type) {
  const head = await registryRequest(o, 'HEAD', `/v2/${o.repo}/blobs/${digest}`);
  if (head.status === 200) return;
  const start = await registryRequest(o, 'POST', `/v2/${o.repo}/blobs/uploads/`);
  if (start.status !== 202) fail(`starting the upload of ${type}: HTTP ${start.status} ${await start.text()}`);
  let loc = start.headers.get('location');
  if (!loc) fail('the registry gave no upload location');
  if (!/^https?:/.test(loc)) loc = `${o.plainHttp ? 'http' : 'https'}://${o.registry}${loc}`;
  const put = await registryRequest(o, 'PUT', `${loc}${loc.includes('?') ? '&' : '?'}digest=${digest}`, data, { 'content-type': 'application/octet-stream' });
  if (put.status !== 201) fail(`uploading ${type}: HTTP ${put.status} ${await put.text()}`);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (!existsSync(join(root, 'packages', 'controller', 'dist', 'bin', 'controller.js'))) {
    fail('packages/controller/dist does not exist; build first: npx turbo run build --filter=@cello/controller...');
  }
  const pkg = JSON.parse(readFileSync(join(root, 'packages', 'controller', 'package.json'), 'utf8'));
  const epoch = Number(process.env.SOURCE_DATE_EPOCH ?? gitEpoch());
  const work = mkdtempSync(join(tmpdir(), 'cello-controller-image-'));
  try {
    const fs = join(work, 'rootfs');
    const cello = join(fs, 'opt', 'cello');
    await bundleController(join(cello, 'app', 'bin', 'js'));
    // version.ts reads ../package.json beside its code; the catalogs are ../../../data from it.
    writeFileSync(join(cello, 'app', 'bin', 'package.json'), `${JSON.stringify({ name: pkg.name, version: pkg.version })}\n`);
    cpSync(join(root, 'packages', 'controller', 'data'), join(cello, 'data'), { recursive: true });
    cpSync(join(root, 'node_modules', 'etcd3', 'proto'), join(cello, 'app', 'bin', 'proto'), { recursive: true });

    const nodeDir = join(work, 'node');
    untar(fetchPinned(`node-linux-${ARCHES[o.arch]}`), nodeDir, ['package/bin/node', 'package/LICENSE']);
    mkdirSync(join(cello, 'node', 'bin'), { recursive: true });
    copyFileSync(join(nodeDir, 'package', 'bin', 'node'), join(cello, 'node', 'bin', 'node'));
    chmodSync(join(cello, 'node', 'bin', 'node'), 0o755);
    copyFileSync(join(nodeDir, 'package', 'LICENSE'), join(cello, 'node', 'LICENSE'));
    mkdirSync(join(cello, 'bin'), { recursive: true });
    // The kernel runs the interpreter named here: no shell is involved.
    writeFileSync(join(cello, 'bin', 'controller'), "#!/opt/cello/node/bin/node\nimport('/opt/cello/app/bin/js/controller.js');\n", { mode: 0o755 });

    const debs = debianLibraries(fs);
    mkdirSync(join(fs, 'etc'), { recursive: true });
    writeFileSync(join(fs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n');
    writeFileSync(join(fs, 'etc', 'group'), 'root:x:0:\nnonroot:x:65532:\n');
    mkdirSync(join(fs, 'tmp'), { recursive: true });
    chmodSync(join(fs, 'tmp'), 0o1777);

    const layerTar = join(work, 'layer.tar');
    execFileSync('tar', [
      '--format=pax',
      '--sort=name',
      '--numeric-owner',
      '--owner=0',
      '--group=0',
      `--mtime=@${epoch}`,
      '--pax-option=delete=atime,delete=ctime',
      '-cf',
      layerTar,
      '-C',
      fs,
      '.',
    ]);
    const tarBuf = readFileSync(layerTar);
    const gz = execFileSync('gzip', ['-n', '-9', '-c', layerTar], { maxBuffer: 1024 * 1024 * 1024 });
    const layer = { digest: `sha256:${sha256(gz)}`, size: gz.length, diffId: `sha256:${sha256(tarBuf)}` };

    const config = Buffer.from(
      JSON.stringify({
        architecture: o.arch,
        os: 'linux',
        created: new Date(epoch * 1000).toISOString(),
        config: {
          User: USER,
          Entrypoint: ['/opt/cello/bin/controller'],
          Env: ['PATH=/opt/cello/bin:/opt/cello/node/bin', 'NODE_ENV=production'],
          WorkingDir: '/',
          Labels: {
            'org.opencontainers.image.title': 'cello-controller',
            'org.opencontainers.image.version': pkg.version,
            'dev.cello.node-version': NODE_VERSION,
            'dev.cello.debian-libraries': Object.entries(debs)
              .map(([p, v]) => `${p}=${v}`)
              .join(','),
          },
        },
        rootfs: { type: 'layers', diff_ids: [layer.diffId] },
        history: [{ created: new Date(epoch * 1000).toISOString(), created_by: 'scripts/package/package-controller-image.mjs' }],
      }),
    );
    const configDigest = `sha256:${sha256(config)}`;
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }],
      }),
    );
    const digest = `sha256:${sha256(manifest)}`;

    await pushBlob(o, layer.digest, gz, 'the layer');
    await pushBlob(o, configDigest, config, 'the config');
    const put = await registryRequest(o, 'PUT', `/v2/${o.repo}/manifests/${o.tag}`, manifest, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
    if (put.status !== 201) fail(`pushing the manifest: HTTP ${put.status} ${await put.text()}`);
    const said = put.headers.get('docker-content-digest');
    if (said && said !== digest) fail(`the registry stored the manifest as ${said}, not ${digest}`);
    process.stderr.write(`package-controller-image: ${o.push}: layer ${(layer.size / 1048576).toFixed(1)} MiB, Node ${NODE_VERSION}, ${Object.keys(debs).join(', ')}\n`);
    process.stdout.write(`${o.registry}/${o.repo}@${digest}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
