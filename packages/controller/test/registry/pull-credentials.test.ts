// The kubelet's keyring rules (pkg/credentialprovider/keyring.go) and what of a pod's pull
// secrets reaches its cell: credentials for exactly the registries its images name.
import { describe, expect, it } from 'vitest';
import { PodSpec, type SecretData } from '@cello/proto/cell';
import { DockerKeyring, imageRepository } from '../../src/registry/keyring.js';
import { podPullCredentials, secretsUsedByPod } from '../../src/registry/pull-credentials.js';

const cred = (u: string) => ({ username: u, password: `${u}-pw`, identityToken: '' });
function keyring(entries: Record<string, string>): DockerKeyring {
  const k = new DockerKeyring();
  k.add(Object.entries(entries).map(([server, u]) => ({ server, ...cred(u) })));
  return k;
}
const users = (k: DockerKeyring, image: string) => k.lookup(image).map((c) => c.username);

describe('keyring lookup, as the kubelet', () => {
  it('normalises image names as Docker does', () => {
    expect(imageRepository('busybox')).toEqual({ host: 'docker.io', path: 'library/busybox' });
    expect(imageRepository('user/app:1')).toEqual({ host: 'docker.io', path: 'user/app' });
    expect(imageRepository('index.docker.io/app@sha256:' + 'a'.repeat(64))).toEqual({ host: 'docker.io', path: 'library/app' });
    expect(imageRepository('127.0.0.1:5000/team/app:v1')).toEqual({ host: '127.0.0.1:5000', path: 'team/app' });
    expect(imageRepository('localhost/app')).toEqual({ host: 'localhost', path: 'app' });
  });

  it('host[:port]: the port must be equal; URLs, schemes and /v1/ /v2/ suffixes mean the host', () => {
    const k = keyring({ 'reg.example.com': 'plain', 'https://reg.example.com:5000/v2/': 'ported' });
    expect(users(k, 'reg.example.com/app')).toEqual(['plain']);
    expect(users(k, 'reg.example.com:5000/app')).toEqual(['ported']);
    expect(users(k, 'reg.example.com:5001/app')).toEqual([]);
    expect(users(k, 'other.example.com/app')).toEqual([]);
  });

  it('path-scoped entries apply under their path only, the most specific first', () => {
    const k = keyring({ 'quay.io': 'host', 'quay.io/coreos': 'coreos' });
    expect(users(k, 'quay.io/coreos/etcd:v3')).toEqual(['coreos', 'host']);
    expect(users(k, 'quay.io/other/app')).toEqual(['host']);
  });

  it('wildcards match one host label each', () => {
    const k = keyring({ '*.example.com': 'wild', '*.*.example.org': 'two' });
    expect(users(k, 'a.example.com/app')).toEqual(['wild']);
    expect(users(k, 'a.b.example.com/app')).toEqual([]);
    expect(users(k, 'example.com/app')).toEqual([]);
    expect(users(k, 'x.y.example.org/app')).toEqual(['two']);
    // A glob is not a regular expression: the dot is literal.
    expect(users(keyring({ 'reg-*.example.com': 'part' }), 'reg-eu.example.com/a')).toEqual(['part']);
    expect(users(keyring({ 'reg-*.example.com': 'part' }), 'other.example.com/a')).toEqual([]);
    expect(users(keyring({ 'a.b.com': 'dot' }), 'aXb.com/a')).toEqual([]);
  });

  it("Docker Hub images take docker login's index.docker.io entry", () => {
    const k = keyring({ 'https://index.docker.io/v1/': 'hub' });
    expect(users(k, 'busybox')).toEqual(['hub']);
    expect(users(k, 'docker.io/user/app')).toEqual(['hub']);
    expect(users(k, 'ghcr.io/user/app')).toEqual([]);
  });
});

const b = (s: string) => Buffer.from(s);
const dockerSecret = (auths: Record<string, { username: string; password: string }>): SecretData => ({
  type: 'kubernetes.io/dockerconfigjson',
  data: { '.dockerconfigjson': b(JSON.stringify({ auths })) },
});
const spec = (images: string[], extra: Partial<PodSpec> = {}) => PodSpec.fromPartial({ containers: images.map((image, i) => ({ name: `c${i}`, image })), ...extra });

describe('podPullCredentials', () => {
  const secrets = {
    regcred: dockerSecret({ 'a.example.com': { username: 'ua', password: 'pa' }, 'b.example.com:5000/team': { username: 'ub', password: 'pb' } }),
    opaque: { type: 'Opaque', data: { x: b('y') } },
  };

  it('sends credentials only for the registries the pod pulls from', () => {
    const r = podPullCredentials(spec(['c.example.com/app:1']), secrets);
    expect(r.credentials).toEqual([]);
    const both = podPullCredentials(spec(['a.example.com/app:1', 'b.example.com:5000/team/app:2', 'b.example.com:5000/other/app']), { ...secrets }, []);
    expect(both.credentials).toEqual([]); // no imagePullSecrets named
    const named = podPullCredentials(spec(['a.example.com/app:1', 'b.example.com:5000/team/app:2', 'b.example.com:5000/other/app'], { imagePullSecrets: ['regcred'] }), secrets);
    expect(named.credentials).toEqual([
      { registry: 'a.example.com', username: 'ua', password: 'pa', identityToken: '' },
      // Path-scoped: for that repository alone.
      { registry: 'b.example.com:5000/team/app', username: 'ub', password: 'pb', identityToken: '' },
    ]);
    expect(named.unusable).toEqual([]);
  });

  it('a missing or non-docker secret is reported, and the pull still goes ahead', () => {
    const r = podPullCredentials(spec(['a.example.com/app'], { imagePullSecrets: ['nope', 'opaque', 'regcred'] }), secrets);
    expect(r.unusable).toEqual([
      { name: 'nope', why: 'not found' },
      { name: 'opaque', why: 'type "Opaque" holds no registry credentials' },
    ]);
    expect(r.credentials.map((c) => c.registry)).toEqual(['a.example.com']);
  });

  it("the pod's own secrets come before the controller's (ECR) keyring", () => {
    const ecr = keyring({ 'a.example.com': 'ecr', 'd.example.com': 'ecr-d' });
    const r = podPullCredentials(spec(['a.example.com/x', 'd.example.com/y'], { imagePullSecrets: ['regcred'] }), secrets, [ecr]);
    expect(r.credentials.map((c) => [c.registry, c.username])).toEqual([
      ['a.example.com', 'ua'],
      ['d.example.com', 'ecr-d'],
    ]);
  });

  it('knows which secrets the pod reads or mounts', () => {
    const s = PodSpec.fromPartial({
      containers: [
        {
          name: 'c',
          image: 'x',
          env: [{ name: 'E', valueFrom: { source: { $case: 'secretKeyRef', value: { name: 'env-s', key: 'k', optional: false } } } }],
          envFrom: [{ prefix: '', source: { $case: 'secretRef', value: { name: 'from-s', optional: false } } }],
        },
      ],
      volumes: [
        { name: 'v', source: { $case: 'secret', value: { secretName: 'vol-s', items: [], optional: false } } },
        { name: 'p', source: { $case: 'projected', value: { sources: [{ source: { $case: 'secret', value: { secretName: 'proj-s', items: [], optional: false } } }] } } },
      ],
      imagePullSecrets: ['pull-s'],
    });
    expect([...secretsUsedByPod(s)].sort()).toEqual(['env-s', 'from-s', 'proj-s', 'vol-s']);
  });
});
