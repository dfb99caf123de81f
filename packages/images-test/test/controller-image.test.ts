// The controller image (scripts/package/package-controller-image.mjs, `npm run
// package:controller-image`): built without Docker, pushed to a real registry, the printed
// digest is the manifest the registry serves; the image runs as 65532 with no shell, and its
// layer, unpacked and entered with chroot as that user, runs the controller: its version, the
// deploy/base configuration checked, and `controller backup` of an embedded store.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type RegistryServer } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from './helpers/paths.js';

const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
let registry: RegistryServer;
let work: string;
let pushed: string;
let build: { status: number | null; stderr: string };

beforeAll(async () => {
  registry = await startRegistry();
  work = mkdtempSync(join(tmpdir(), 'cello-controller-image-'));
  const r = spawnSync(
    process.execPath,
    [join(repoRoot, 'scripts', 'package', 'package-controller-image.mjs'), '--push', `${registry.host}/cello/controller:test`, '--plain-http'],
    {
      encoding: 'utf8',
      timeout: 600_000,
    },
  );
  build = { status: r.status, stderr: r.stderr };
  pushed = r.stdout.trim();
}, 660_000);

afterAll(async () => {
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function blob(digest: string): Promise<Buffer> {
  const res = await fetch(`http://${registry.host}/v2/cello/controller/blobs/${digest}`, { signal: AbortSignal.timeout(60_000) });
  expect(res.status).toBe(200);
  return Buffer.from(await res.arrayBuffer());
}

/** chroot's path, found with this process's PATH (the image's own environment is empty). */
const CHROOT = execFileSync('sh', ['-c', 'command -v chroot'], { encoding: 'utf8' }).trim();

/** Runs the image's entrypoint in its unpacked root as the image's user, with no inherited environment. */
function inImage(root: string, args: string[]) {
  return spawnSync(CHROOT, ['--userspec=65532:65532', root, '/opt/cello/bin/controller', ...args], { encoding: 'utf8', env: {}, timeout: 120_000 });
}

describe('controller image', () => {
  it('is pushed, runs non-root without a shell, and runs the controller', async () => {
    expect(build.status, build.stderr).toBe(0);
    const m = /^(.+)\/cello\/controller@(sha256:[0-9a-f]{64})$/.exec(pushed);
    expect(m, pushed).not.toBeNull();
    const res = await fetch(`http://${registry.host}/v2/cello/controller/manifests/test`, { headers: { accept: MANIFEST }, signal: AbortSignal.timeout(30_000) });
    const manifestBytes = Buffer.from(await res.arrayBuffer());
    expect(`sha256:${createHash('sha256').update(manifestBytes).digest('hex')}`).toBe(m![2]);
    const manifest = JSON.parse(manifestBytes.toString()) as { config: { digest: string }; layers: { digest: string; mediaType: string }[] };
    expect(manifest.layers).toHaveLength(1);
    const config = JSON.parse((await blob(manifest.config.digest)).toString()) as {
      architecture: string;
      config: { User: string; Entrypoint: string[]; Labels: Record<string, string> };
    };
    expect(config.architecture).toBe('amd64');
    expect(config.config.User).toBe('65532:65532');
    expect(config.config.Entrypoint).toEqual(['/opt/cello/bin/controller']);

    const layer = join(work, 'layer.tar.gz');
    writeFileSync(layer, await blob(manifest.layers[0]!.digest));
    const names = execFileSync('tar', ['-tzf', layer], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }).split('\n');
    // No shell and no other program than Node: the kernel starts the entrypoint by its #! line.
    for (const sh of ['./bin/sh', './usr/bin/sh', './bin/bash', './usr/bin/bash', './bin/busybox']) expect(names).not.toContain(sh);
    expect(names).toContain('./opt/cello/node/bin/node');

    const root = join(work, 'root');
    mkdirSync(root);
    execFileSync('tar', ['-xzf', layer, '-C', root]);
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'packages', 'controller', 'package.json'), 'utf8')) as { version: string };
    const version = inImage(root, ['--version']);
    expect(version.stderr).toBe('');
    expect(version.stdout.trim()).toBe(pkg.version);

    // The configuration deploy/base ships is valid for the controller in the image.
    const cm = readFileSync(join(repoRoot, 'deploy', 'base', 'configmap.yaml'), 'utf8');
    // The block scalar under `controller.yaml: |`, indented four spaces.
    const block = cm.slice(cm.indexOf('  controller.yaml: |\n') + '  controller.yaml: |\n'.length);
    const controllerYaml = block
      .split('\n')
      .map((l) => l.slice(4))
      .join('\n');
    mkdirSync(join(root, 'etc', 'cello'), { recursive: true });
    writeFileSync(join(root, 'etc', 'cello', 'controller.yaml'), controllerYaml);
    const check = inImage(root, ['--check', '-c', '/etc/cello/controller.yaml']);
    expect(check.stderr).toBe('');
    expect(check.stdout).toBe('/etc/cello/controller.yaml: ok\n');

    // The store code (and its bundled dependencies) works in the image: a backup of a new store.
    writeFileSync(
      join(root, 'tmp', 'local.yaml'),
      'controllerId: image-test\napi: { insecure: true }\nsecurity: { mode: insecure-dev }\nstore: { kind: embedded, dir: /tmp/store }\nprovider: { kind: local, root: /tmp/cells }\n',
    );
    const backup = inImage(root, ['backup', '-c', '/tmp/local.yaml', '--out', '/tmp/backup.json']);
    expect(backup.stderr).toBe('');
    expect(backup.stdout).toMatch(/^wrote \/tmp\/backup\.json: 0 keys at revision 0/);
    expect(existsSync(join(root, 'tmp', 'backup.json'))).toBe(true);
  }, 300_000);
});
