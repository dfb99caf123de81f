// The Packer templates: formatted, and valid for Packer itself with the real amazon and
// googlecompute plugins (built from the Go module proxy), against the real agent bundle and
// install.sh they upload. Validation runs without a network (CHECKPOINT_DISABLE, the AWS
// template's region check off, and a network namespace with only loopback).
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ensureBundles, type Bundles } from './helpers/bundle.js';
import { ensurePacker, type Packer } from './helpers/packer.js';
import { imagesDir } from './helpers/paths.js';

let packer: Packer;
let bundles: Bundles;

// In a network namespace of its own (loopback only): validation must not need the network, and
// if a plugin tried to call a cloud API it would fail here instead of reaching out.
function run(dir: string, args: string[]) {
  const r = spawnSync('unshare', ['--net', '--', packer.bin, ...args], { cwd: join(imagesDir, dir), env: packer.env, encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

const required = {
  aws: () => ['-var', `agent_version=${bundles.version}`, '-var', `bundle_dir=${bundles.dir}`, '-var', 'skip_region_validation=true'],
  gcp: () => ['-var', 'project_id=cello-images-test', '-var', `agent_version=${bundles.version}`, '-var', `bundle_dir=${bundles.dir}`],
};

beforeAll(() => {
  bundles = ensureBundles();
  packer = ensurePacker();
}, 3_600_000);

describe.each(['aws', 'gcp'] as const)('images/%s/cell.pkr.hcl', (dir) => {
  it('is formatted the way packer fmt writes it', () => {
    const r = run(dir, ['fmt', '-check', '-diff', '.']);
    expect(r.out).toBe('');
    expect(r.status).toBe(0);
  });

  it('passes packer validate with its plugin, for amd64 and arm64', () => {
    for (const arch of ['amd64', 'arm64']) {
      const r = run(dir, ['validate', ...required[dir](), '-var', `arch=${arch}`, '.']);
      expect(r.out).toContain('The configuration is valid.');
      expect(r.status).toBe(0);
    }
  });

  it('refuses a bad variable, naming it', () => {
    const r = run(dir, ['validate', ...required[dir](), '-var', 'arch=sparc', '.']);
    expect(r.status).toBe(1);
    expect(r.out).toContain('The arch variable must be amd64 or arm64.');
  });

  it('refuses to build without the agent bundle it uploads', () => {
    const r = run(dir, ['validate', ...required[dir](), '-var', 'agent_version=0.0.0-missing', '.']);
    expect(r.status).toBe(1);
    expect(r.out).toContain('cell-agent-0.0.0-missing-linux-amd64.tar.gz');
  });
});
