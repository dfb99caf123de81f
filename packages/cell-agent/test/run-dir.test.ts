// The agent's run dir (what runc is told to run) may not be planted by anyone else: a symlink,
// a directory owned by another user, or a parent others can write to is refused at start.
import { chownSync, chmodSync, existsSync, lchownSync, mkdirSync, mkdtempSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { defaultRunDir, startAgent } from '../src/agent.js';
import { ensurePrivateDir, RunDirError } from '../src/runtime/run-dir.js';

const base = () => mkdtempSync(join(tmpdir(), 'cello-rundir-'));

describe('run dir', () => {
  it('defaults under /run/cello, not the world-writable /dev/shm', () => {
    expect(defaultRunDir('/var/lib/cello')).toMatch(/^\/run\/cello\/agent\/[0-9a-f]{12}$/);
  });

  it('is created 0700 with its missing parents, and tightened when it exists', () => {
    const b = base();
    ensurePrivateDir(join(b, 'a/b/run'));
    for (const p of ['a', 'a/b', 'a/b/run']) expect(statSync(join(b, p)).mode & 0o777).toBe(0o700);
    mkdirSync(join(b, 'loose'), { mode: 0o755 });
    ensurePrivateDir(join(b, 'loose'));
    expect(statSync(join(b, 'loose')).mode & 0o777).toBe(0o700);
  });

  it('refuses a pre-planted symlink', () => {
    const b = base();
    mkdirSync(join(b, 'elsewhere'));
    symlinkSync(join(b, 'elsewhere'), join(b, 'run'));
    expect(() => ensurePrivateDir(join(b, 'run'))).toThrow(RunDirError);
    expect(() => ensurePrivateDir(join(b, 'run'))).toThrow(`${join(b, 'run')} is a symlink`);
    // A symlinked parent planted by another user is refused too.
    symlinkSync(join(b, 'elsewhere'), join(b, 'parent'));
    lchownSync(join(b, 'parent'), 1000, 1000);
    expect(() => ensurePrivateDir(join(b, 'parent/run'))).toThrow(`${join(b, 'parent')} is a symlink`);
    expect(existsSync(join(b, 'elsewhere/run'))).toBe(false);
  });

  it('refuses a directory not owned by root, and a parent others can write to', () => {
    const b = base();
    mkdirSync(join(b, 'theirs'), { mode: 0o700 });
    chownSync(join(b, 'theirs'), 1000, 1000);
    expect(() => ensurePrivateDir(join(b, 'theirs'))).toThrow(`${join(b, 'theirs')} is owned by uid 1000, not root`);
    mkdirSync(join(b, 'open'));
    chmodSync(join(b, 'open'), 0o777);
    expect(() => ensurePrivateDir(join(b, 'open/run'))).toThrow(`${join(b, 'open')} is writable by others (mode 777)`);
  });

  it('the agent does not start on a planted run dir', async () => {
    const b = base();
    mkdirSync(join(b, 'attacker'));
    symlinkSync(join(b, 'attacker'), join(b, 'run'));
    await expect(
      startAgent({
        listen: '127.0.0.1:0',
        stateDir: join(b, 'state'),
        runDir: join(b, 'run'),
        tls: undefined,
        logger: pino({ level: 'silent' }),
        cgroupParent: '/cello-test/rundir',
      }),
    ).rejects.toThrow(/is a symlink; refusing to follow it/);
  });
});
