// api.policy and the API's configuration: what a rule grants (and only that), and the
// configuration errors that name their field.
import { describe, expect, it } from 'vitest';
import { PolicyAuthorizer, policySchema, isLoopbackListen, type Principal } from '../../src/api/auth/index.js';
import { parseConfig } from '../../src/config.js';

const alice: Principal = { user: 'alice', groups: ['dev'], via: 'certificate' };
const policy = new PolicyAuthorizer(
  policySchema.parse([
    { users: ['alice'], namespaces: ['dev'], verbs: ['get', 'list', 'logs'] },
    { groups: ['viewers'], namespaces: ['*'], verbs: ['list', 'watch'], resources: ['pods', 'cells'] },
  ]),
);

describe('api.policy', () => {
  it('grants a rule its namespaces and verbs, and nothing else', async () => {
    expect((await policy.authorize(alice, { verb: 'get', resource: 'pods', namespace: 'dev' })).allowed).toBe(true);
    expect((await policy.authorize(alice, { verb: 'logs', resource: 'pods', namespace: 'dev' })).allowed).toBe(true);
    expect((await policy.authorize(alice, { verb: 'exec', resource: 'pods', namespace: 'dev' })).allowed).toBe(false);
    expect((await policy.authorize(alice, { verb: 'get', resource: 'pods', namespace: 'default' })).allowed).toBe(false);
    // Every namespace, and cluster-scoped cells, need a rule over '*'.
    expect((await policy.authorize(alice, { verb: 'list', resource: 'pods', namespace: '*' })).allowed).toBe(false);
    expect((await policy.authorize(alice, { verb: 'list', resource: 'cells', namespace: '*' })).allowed).toBe(false);
  });

  it('matches groups, limits resources, and always allows system:masters', async () => {
    const viewer: Principal = { user: 'bob', groups: ['viewers'], via: 'token' };
    expect((await policy.authorize(viewer, { verb: 'list', resource: 'cells', namespace: '*' })).allowed).toBe(true);
    expect((await policy.authorize(viewer, { verb: 'list', resource: 'events', namespace: '*' })).allowed).toBe(false);
    expect((await policy.authorize(viewer, { verb: 'delete', resource: 'pods', namespace: 'dev' })).allowed).toBe(false);
    const master: Principal = { user: 'root', groups: ['system:masters'], via: 'certificate' };
    expect((await new PolicyAuthorizer([]).authorize(master, { verb: 'exec', resource: 'pods', namespace: 'x' })).allowed).toBe(true);
    // A user merely named like a group gets nothing from it.
    expect((await new PolicyAuthorizer([]).authorize({ user: 'system:masters', groups: [], via: 'certificate' }, { verb: 'get', resource: 'pods', namespace: 'x' })).allowed).toBe(
      false,
    );
  });
});

describe('api configuration', () => {
  const base = { controllerId: 'dev', security: { mode: 'insecure-dev' } };
  it('refuses plaintext on an address others can reach, naming api.listen', () => {
    expect(() => parseConfig({ ...base, api: { listen: '0.0.0.0:7390', insecure: true } }, 'c.yaml')).toThrow(
      /c\.yaml: api\.listen: 0\.0\.0\.0:7390 is not a loopback address; plaintext \(api\.insecure: true\)/,
    );
    expect(() => parseConfig({ ...base, api: { listen: '10.0.0.5:7390', insecure: true } })).toThrow(/api\.listen: .* not a loopback address/);
    expect(parseConfig({ ...base, api: { listen: '127.0.0.1:7390', insecure: true } }).api.insecure).toBe(true);
    expect(parseConfig({ ...base, api: { listen: '[::1]:7390', insecure: true } }).api.insecure).toBe(true);
    // TLS may listen anywhere.
    expect(parseConfig({ ...base, api: { listen: '0.0.0.0:7390' } }).api.insecure).toBe(false);
    expect(isLoopbackListen('localhost:1')).toBe(true);
    expect(isLoopbackListen('127.0.0.1.evil.example:1')).toBe(false);
  });

  it('a rule with no subject, or an unknown verb, is an error naming the rule', () => {
    expect(() => parseConfig({ ...base, api: { policy: [{ namespaces: ['*'], verbs: ['get'] }] } })).toThrow(/api\.policy\[0\]: a rule needs at least one of users or groups/);
    expect(() => parseConfig({ ...base, api: { policy: [{ users: ['a'], namespaces: ['*'], verbs: ['sudo'] }] } })).toThrow(/api\.policy\[0\]\.verbs\[0\]/);
  });
});
