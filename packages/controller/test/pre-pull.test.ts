// What a warm cell pre-pulls: its entry's configured images, then the most frequent images of
// the last recentPods pods of its type (kept in memory, bounded), and the configuration's checks.
import { describe, expect, it } from 'vitest';
import { PrePull } from '../src/reconcile/pre-pull.js';
import { parseConfig } from '../src/config.js';

describe('PrePull.imagesFor', () => {
  const entry = { instanceType: 'local.nano', size: 1, prePull: ['reg/base:1'], recentPods: 4, recentImages: 2 };

  it('configured images first, then the most frequent of the last recentPods pods (ties: the most recent)', () => {
    const p = new PrePull();
    expect(p.imagesFor(entry)).toEqual(['reg/base:1']);
    for (const images of [['reg/a:1'], ['reg/b:1', 'reg/base:1'], ['reg/b:1'], ['reg/c:1', 'reg/c:1']]) p.recordPod([entry], 'local.nano', images);
    // b: 2 pods; c: 1 (a pod counts an image once), newer than a: 1; base is configured already.
    expect(p.imagesFor(entry)).toEqual(['reg/base:1', 'reg/b:1', 'reg/c:1']);
    // Only the last 4 pods are kept: two more of d push a and the first b out.
    p.recordPod([entry], 'local.nano', ['reg/d:1']);
    p.recordPod([entry], 'local.nano', ['reg/d:1']);
    expect(p.imagesFor(entry)).toEqual(['reg/base:1', 'reg/d:1', 'reg/c:1']);
  });

  it('other types and entries without recent pods remember nothing', () => {
    const p = new PrePull();
    p.recordPod([entry], 'local.small', ['reg/x:1']);
    expect(p.imagesFor({ ...entry, instanceType: 'local.small' })).toEqual(['reg/base:1']);
    const off = { ...entry, recentPods: 0 };
    p.recordPod([off], 'local.nano', ['reg/y:1']);
    expect(p.imagesFor(off)).toEqual(['reg/base:1']);
  });
});

describe('warmPool pre-pull configuration', () => {
  const base = { controllerId: 'dev', security: { mode: 'insecure-dev' } };
  it('takes prePull, recentPods and recentImages, with defaults', () => {
    const c = parseConfig({ ...base, warmPool: [{ instanceType: 'local.nano', size: 1, prePull: ['busybox', '127.0.0.1:5000/app:1'] }] }, 'c.yaml');
    expect(c.warmPool[0]).toEqual({ instanceType: 'local.nano', size: 1, spot: false, prePull: ['busybox', '127.0.0.1:5000/app:1'], recentPods: 20, recentImages: 3 });
  });
  it('a bad image reference or count names the field', () => {
    expect(() => parseConfig({ ...base, warmPool: [{ instanceType: 'local.nano', size: 1, prePull: ['ok', 'Not A Ref'] }] }, 'c.yaml')).toThrow(
      /c\.yaml: warmPool\[0\]\.prePull\[1\]: invalid image reference/,
    );
    expect(() => parseConfig({ ...base, warmPool: [{ instanceType: 'local.nano', size: 1, recentPods: -1 }] }, 'c.yaml')).toThrow(/c\.yaml: warmPool\[0\]\.recentPods: /);
  });
});
