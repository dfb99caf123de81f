// `controller issue-user --help` shows the --ttl default as the duration the flag takes.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CONTROLLER_BIN } from './helpers/cluster.js';

describe('controller issue-user --help', () => {
  it('shows the --ttl default as a duration, not seconds', () => {
    const help = execFileSync(process.execPath, [CONTROLLER_BIN, 'issue-user', '--help'], { encoding: 'utf8', timeout: 20_000 });
    expect(help).toMatch(/--ttl <duration>[\s\S]*\(default: 30d\)/);
    expect(help).not.toContain('2592000');
  });
});
