// Registry credentials in Secrets: what is accepted, and malformed ones refused naming the
// Secret and the field, before any pod depends on them.
import { describe, expect, it } from 'vitest';
import { ManifestError, parseDockerConfigSecret, readManifests } from '../src/index.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');
const secretDoc = (type: string, key: string, value: string) => ({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'regcred' }, type, data: { [key]: b64(value) } });

describe('docker config secrets', () => {
  it('reads dockerconfigjson: auth wins over username/password; identity tokens; unknown fields kept out of the way', () => {
    const cfg = {
      auths: {
        'reg.example.com:5000': { auth: b64('puller:pa:ss'), username: 'ignored', email: 'x@y' },
        'https://index.docker.io/v1/': { username: 'u', password: 'p' },
        '*.example.org/team': { identitytoken: 'refresh' },
      },
      credHelpers: {},
    };
    const [o] = readManifests(secretDoc('kubernetes.io/dockerconfigjson', '.dockerconfigjson', JSON.stringify(cfg)));
    expect(o!.kind).toBe('Secret');
    const s = o as Extract<typeof o, { kind: 'Secret' }>;
    expect(s.data.type).toBe('kubernetes.io/dockerconfigjson');
    expect(parseDockerConfigSecret('regcred', s.data.type!, s.data.data)).toEqual([
      { server: 'reg.example.com:5000', username: 'puller', password: 'pa:ss', identityToken: '' },
      { server: 'https://index.docker.io/v1/', username: 'u', password: 'p', identityToken: '' },
      { server: '*.example.org/team', username: '', password: '', identityToken: 'refresh' },
    ]);
  });

  it('reads the legacy dockercfg (the bare auths map)', () => {
    const data = { '.dockercfg': Buffer.from(JSON.stringify({ 'reg.example.com': { auth: b64('a:b') } })) };
    expect(parseDockerConfigSecret('old', 'kubernetes.io/dockercfg', data)).toEqual([{ server: 'reg.example.com', username: 'a', password: 'b', identityToken: '' }]);
  });

  it('an Opaque secret is not parsed, whatever it holds', () => {
    const [o] = readManifests(secretDoc('Opaque', '.dockerconfigjson', 'not json'));
    expect((o as { data: { type: string } }).data.type).toBe('Opaque');
  });

  const refused: [string, string, string, RegExp][] = [
    ['missing key', '.other', '{}', /^data\["\.dockerconfigjson"\]: is required \(Secret "regcred" of type kubernetes\.io\/dockerconfigjson\)$/],
    ['not JSON', '.dockerconfigjson', '{auths', /^data\["\.dockerconfigjson"\]: is not valid JSON/],
    ['auths not an object', '.dockerconfigjson', '{"auths": []}', /^data\["\.dockerconfigjson"\]\.auths: .*Secret "regcred"/],
    ['password not a string', '.dockerconfigjson', '{"auths": {"r.io": {"password": 5}}}', /^data\["\.dockerconfigjson"\]\.auths\["r\.io"\]\.password: /],
    [
      'auth without a colon',
      '.dockerconfigjson',
      JSON.stringify({ auths: { 'r.io': { auth: b64('nocolon') } } }),
      /^data\["\.dockerconfigjson"\]\.auths\["r\.io"\]\.auth: must be base64 of "username:password"/,
    ],
    ['auth not base64', '.dockerconfigjson', '{"auths": {"r.io": {"auth": "***"}}}', /auths\["r\.io"\]\.auth: must be base64/],
  ];
  for (const [what, key, value, msg] of refused) {
    it(`refuses a dockerconfigjson secret: ${what}`, () => {
      let err: unknown;
      try {
        readManifests(secretDoc('kubernetes.io/dockerconfigjson', key, value));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ManifestError);
      expect((err as Error).message).toMatch(msg);
      // The password never lands in the message.
      expect((err as Error).message).not.toContain('nocolon');
    });
  }
});
