import { describe, expect, it } from 'vitest';
import { isSpiffeName, parseSpiffeId } from '../src/spiffe.js';

describe('parseSpiffeId', () => {
  it('reads the trust domain, kind and name of a Cello identity', () => {
    expect(parseSpiffeId('spiffe://cello/cell/c-1')).toEqual({ trustDomain: 'cello', kind: 'cell', name: 'c-1', uri: 'spiffe://cello/cell/c-1' });
    expect(parseSpiffeId('spiffe://prod.example/client/controller')).toMatchObject({ kind: 'client', name: 'controller' });
    expect(parseSpiffeId('spiffe://cello/user/system:virtual-node')).toMatchObject({ kind: 'user', name: 'system:virtual-node' });
  });

  it('refuses what is not one', () => {
    for (const uri of [
      'https://cello/cell/c-1',
      'spiffe://cello/pod/c-1',
      'spiffe://cello/cell/a/b',
      'spiffe://Cello/cell/c-1',
      'spiffe://cello/cell/',
      'spiffe://cello/client/system:x', // ':' only in user names
      'spiffe://cello/cell/-leading',
    ]) {
      expect(parseSpiffeId(uri), uri).toBeUndefined();
    }
  });

  it('allows ":" and "@" in user names only', () => {
    expect(isSpiffeName('user', 'alice@example.com')).toBe(true);
    expect(isSpiffeName('client', 'alice@example.com')).toBe(false);
    expect(isSpiffeName('cell', 'c_1.x')).toBe(true);
  });
});
