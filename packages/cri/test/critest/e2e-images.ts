// critest's busybox and nonewprivs images for the whole suite, taken from the Kubernetes
// conformance image build (scripts/k8s/build-e2e-images.sh, cached under $CELLO_CACHE: it builds
// what is missing, once): upstream's busybox (1.37, defconfig, static) and nonewprivs 1.3 (the
// busybox rootfs plus a setuid-root `nnp` built from k8s.io/kubernetes/test/images/nonewprivs).
//
// Why upstream's busybox and not Debian's busybox-static (the fixture): Debian's sh runs its own
// applets before looking at PATH, so `sh -c ls` never executes /bin/ls; critest's MaskedPaths spec
// masks /bin/ls and expects `/bin/sh: ls: Permission denied`, as its busybox's sh (defconfig)
// gives. Upstream's image hard-links its applets; the build's are symlinks to /bin/busybox, and
// masking a symlink masks its target (every applet, sh too), so /bin/ls is a file of its own here.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { pushImage, pushLayoutTag, type RegistryServer } from '@cello/testkit';

const SCRIPT = fileURLToPath(new URL('../../../../scripts/k8s/build-e2e-images.sh', import.meta.url));

const TAGS = ['e2e-test-images_busybox_1.37.0-1', 'e2e-test-images_nonewprivs_1.3'];

/**
 * A private OCI layout with the two images critest needs, copied from the conformance build's
 * (built when missing or stale: the Kubernetes e2e sources, busybox). The build's layout is shared
 * by every checkout on the machine, and one whose script or list differs rebuilds it in place
 * (under the script's lock): the copy is made holding that lock shared, so it never reads a layout
 * being rebuilt, and what the pushes read afterwards is this run's own.
 */
export function conformanceLayout(): string {
  const dir = mkdtempSync(join(tmpdir(), 'cello-critest-e2e-'));
  const copy = (): void => {
    const shared = execFileSync('bash', [SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 90 * 60_000 })
      .trim()
      .split('\n')
      .pop()!;
    const lock = join(dirname(shared), '.lock');
    for (const tag of TAGS)
      execFileSync('flock', ['-s', lock, 'skopeo', 'copy', '--quiet', '--preserve-digests', `oci:${shared}:${tag}`, `oci:${join(dir, 'oci')}:${tag}`], {
        stdio: ['ignore', 'ignore', 'pipe'],
        timeout: 10 * 60_000,
      });
  };
  try {
    copy();
  } catch {
    copy(); // rebuilt meanwhile by another checkout and then removed: build it again
  }
  return join(dir, 'oci');
}

/** A tag's layers in the layout, each with its DiffID. */
function layoutLayers(layout: string, tag: string): { blob: Buffer; mediaType: string; diffId: string }[] {
  const blob = (d: string) => readFileSync(join(layout, 'blobs', 'sha256', d.slice('sha256:'.length)));
  const index = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string; annotations?: Record<string, string> }[] };
  const m = index.manifests.find((x) => x.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!m) throw new Error(`${layout} has no image tagged ${tag} (scripts/conformance/images.txt)`);
  const manifest = JSON.parse(blob(m.digest).toString()) as { config: { digest: string }; layers: { digest: string; mediaType: string }[] };
  const config = JSON.parse(blob(manifest.config.digest).toString()) as { rootfs: { diff_ids: string[] } };
  return manifest.layers.map((l, i) => ({ blob: blob(l.digest), mediaType: l.mediaType, diffId: config.rootfs.diff_ids[i]! }));
}

/** critest's busybox (e2e-test-images/busybox:1.29-2): upstream's busybox layer, plus /bin/ls as a file of its own. */
export async function pushUpstreamBusybox(reg: RegistryServer, layout: string, name: string): Promise<string> {
  const layers = layoutLayers(layout, 'e2e-test-images_busybox_1.37.0-1');
  if (layers.length !== 1) throw new Error(`the conformance busybox image has ${layers.length} layers, expected 1`);
  const busybox = execFileSync('tar', ['-xzf', '-', '-O', './bin/busybox'], { input: layers[0]!.blob, maxBuffer: 64 << 20 });
  // A one-file layer: bin/ls, the busybox binary (it runs the applet its name says).
  const dir = mkdtempSync(join(tmpdir(), 'cello-critest-ls-'));
  let tar: Buffer;
  try {
    mkdirSync(join(dir, 'bin'));
    writeFileSync(join(dir, 'bin', 'ls'), busybox, { mode: 0o755 });
    tar = execFileSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '--mtime=@0', '-C', dir, '-cf', '-', 'bin/ls'], { maxBuffer: 64 << 20 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const env = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'];
  return (await pushImage(reg, name, [...layers, { blob: tar }], { Cmd: ['sh'], Env: env })).ref;
}

/** critest's e2e-test-images/nonewprivs:1.3, as the conformance build makes it. */
export function pushNonewprivs(reg: RegistryServer, layout: string): Promise<string> {
  return pushLayoutTag(reg, layout, 'e2e-test-images_nonewprivs_1.3', 'e2e-test-images/nonewprivs:1.3');
}
