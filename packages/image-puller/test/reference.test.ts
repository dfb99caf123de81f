import { describe, expect, it } from 'vitest';
import { normalizeReference, parseReference, PullError } from '../src/index.js';

describe('parseReference', () => {
  it.each([
    ['busybox', { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' }],
    ['busybox:1.36', { registry: 'docker.io', repository: 'library/busybox', tag: '1.36' }],
    ['user/app', { registry: 'docker.io', repository: 'user/app', tag: 'latest' }],
    ['index.docker.io/library/busybox', { registry: 'docker.io', repository: 'library/busybox', tag: 'latest' }],
    ['localhost:5000/app', { registry: 'localhost:5000', repository: 'app', tag: 'latest' }],
    ['localhost/app:v1', { registry: 'localhost', repository: 'app', tag: 'v1' }],
    ['127.0.0.1:5000/team/app:v1', { registry: '127.0.0.1:5000', repository: 'team/app', tag: 'v1' }],
    ['ghcr.io/o/r/x:1', { registry: 'ghcr.io', repository: 'o/r/x', tag: '1' }],
    [`busybox@sha256:${'a'.repeat(64)}`, { registry: 'docker.io', repository: 'library/busybox', digest: `sha256:${'a'.repeat(64)}` }],
    [`r.io/app:v1@sha256:${'b'.repeat(64)}`, { registry: 'r.io', repository: 'app', tag: 'v1', digest: `sha256:${'b'.repeat(64)}` }],
    ['[::1]:5000/app', { registry: '[::1]:5000', repository: 'app', tag: 'latest' }],
  ])('%s', (ref, want) => {
    expect(parseReference(ref)).toEqual(want);
  });

  it('normalises Docker Hub names', () => {
    expect(normalizeReference('busybox')).toBe('docker.io/library/busybox:latest');
    expect(normalizeReference('127.0.0.1:5000/a')).toBe('127.0.0.1:5000/a:latest');
  });

  it.each([
    ['', 'invalid'],
    ['Busybox', 'invalid'],
    ['busybox:bad tag', 'invalid'],
    ['busybox@sha256:abc', 'invalid'],
    [`busybox@sha512:${'a'.repeat(128)}`, 'unsupported'],
    ['a//b', 'invalid'],
    ['host:99999999/app', 'invalid'],
  ])('rejects %j as %s', (ref, kind) => {
    let err: unknown;
    try {
      parseReference(ref);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PullError);
    expect((err as PullError).kind).toBe(kind);
  });
});
