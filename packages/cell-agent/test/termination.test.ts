// Termination messages are bounded as the kubelet bounds them (4 KiB per container, 12 KiB per
// pod) and read without following a symlink or blocking on a FIFO, with real units.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RestartPolicy, TerminationMessagePolicy } from '@cello/proto/cell';
import { fallbackMessage, readMessageFile } from '../src/pod/termination-message.js';
import { apply, pod, startTestAgent, type TestAgent } from './helpers/agent.js';
import { startTestRegistry, type TestImages } from './helpers/registry.js';
import { requireTools } from './helpers/rootfs.js';

describe('reading a termination message', () => {
  const d = mkdtempSync(join(tmpdir(), 'cello-term-'));
  it('reads at most the limit from a large file', () => {
    writeFileSync(join(d, 'big'), '');
    truncateSync(join(d, 'big'), 1 << 30); // 1 GiB, sparse: read whole, the agent would need 1 GiB
    expect(readMessageFile(join(d, 'big'), 4096)).toHaveLength(4096);
  });
  it('does not follow a symlink, nor open a FIFO or a directory', () => {
    writeFileSync(join(d, 'host-secret'), 'secret');
    symlinkSync(join(d, 'host-secret'), join(d, 'link'));
    expect(readMessageFile(join(d, 'link'), 4096)).toBe('');
    execFileSync('mkfifo', [join(d, 'fifo')]);
    expect(readMessageFile(join(d, 'fifo'), 4096)).toBe('');
    expect(readMessageFile(d, 4096)).toBe('');
    expect(readMessageFile(join(d, 'missing'), 4096)).toBe('');
  });
  it('cuts at a character boundary', () => {
    writeFileSync(join(d, 'utf8'), 'é'.repeat(10)); // 2 bytes each
    expect(readMessageFile(join(d, 'utf8'), 5)).toBe('éé');
    expect(fallbackMessage('a\n'.repeat(100), 4096)).toBe('a\n'.repeat(79) + 'a');
    expect(Buffer.byteLength(fallbackMessage('é'.repeat(3000), 1000))).toBeLessThanOrEqual(1000);
  });
});

describe('termination messages in a pod', () => {
  let reg: TestImages;
  let a: TestAgent;
  beforeAll(async () => {
    requireTools();
    reg = await startTestRegistry();
    a = await startTestAgent(undefined, { insecureRegistries: [reg.registry.host] });
  });
  afterAll(async () => {
    await a?.stop();
    await reg?.stop();
  });

  it('shares 12 KiB among the containers, at most 4 KiB each, fallback logs included', async () => {
    const write = (n: number) => ['sh', '-c', `head -c ${n} /dev/zero | tr '\\0' x > /dev/termination-log`];
    await apply(a.client, {
      pod: pod('term-budget', {
        restartPolicy: RestartPolicy.RESTART_POLICY_NEVER,
        containers: [
          { name: 'c1', image: reg.busybox, command: write(1 << 20) },
          { name: 'c2', image: reg.busybox, command: write(6000) },
          { name: 'c3', image: reg.busybox, command: write(100) },
          { name: 'c4', image: reg.busybox, command: write(6000) },
          {
            name: 'c5',
            image: reg.busybox,
            command: ['sh', '-c', 'head -c 9000 /dev/zero | tr "\\0" y; exit 1'],
            terminationMessagePolicy: TerminationMessagePolicy.TERMINATION_MESSAGE_POLICY_FALLBACK_TO_LOGS_ON_ERROR,
          },
        ],
      }),
    });
    const names = ['c1', 'c2', 'c3', 'c4', 'c5'];
    await a.watch.until('all done', (w) => names.every((n) => w.terminated(n) !== undefined), 30_000);
    const len = (n: string) => Buffer.byteLength(a.watch.terminated(n)!.message);
    // 12 KiB / 5 containers = 2457 bytes each.
    expect(names.map(len)).toEqual([2457, 2457, 100, 2457, 2048]);
    expect(names.map(len).reduce((x, y) => x + y)).toBeLessThanOrEqual(12 * 1024);
  });
});
