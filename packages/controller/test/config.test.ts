import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config.js';
import { canTransition, CellState } from '../src/cells/state.js';

describe('configuration', () => {
  it('fills defaults', () => {
    const c = parseConfig({ controllerId: 'dev', security: { mode: 'insecure-dev' } });
    expect(c.api.listen).toBe('127.0.0.1:7390');
    expect(c.store.kind).toBe('embedded');
    expect(c.provider.kind).toBe('local');
    expect(c.timeouts.healthSeconds).toBe(15);
  });
  it('names the field of each error', () => {
    expect(() => parseConfig({ controllerId: 'dev', security: { mode: 'insecure-dev' }, warmPool: [{ instanceType: 'local.nano', size: 'two' }] }, 'c.yaml')).toThrow(
      /c.yaml: warmPool\[0\].size: /,
    );
    expect(() => parseConfig({ controllerId: 'Dev_1' })).toThrow(/controllerId: expected a DNS label/);
    expect(() => parseConfig({ controllerId: 'dev', security: { mode: 'insecure-dev' }, api: { listen: 'nowhere' } })).toThrow(/api.listen: expected HOST:PORT/);
    expect(() => parseConfig({ controllerId: 'dev', security: { mode: 'insecure-dev' }, tiemouts: {} })).toThrow(/unknown field "tiemouts"/);
    expect(() => parseConfig({ controllerId: 'dev' })).toThrow(/security.encryptionKeyFile: required/);
  });
});

describe('cell state machine', () => {
  it('allows the lifecycle and refuses shortcuts', () => {
    const S = CellState;
    const path = [S.CELL_STATE_CREATING, S.CELL_STATE_BOOTING, S.CELL_STATE_READY, S.CELL_STATE_BOUND, S.CELL_STATE_DRAINING, S.CELL_STATE_TERMINATING, S.CELL_STATE_TERMINATED];
    for (let i = 1; i < path.length; i++) expect(canTransition(path[i - 1]!, path[i]!)).toBe(true);
    expect(canTransition(S.CELL_STATE_CREATING, S.CELL_STATE_BOUND)).toBe(false);
    expect(canTransition(S.CELL_STATE_TERMINATED, S.CELL_STATE_READY)).toBe(false);
    expect(canTransition(S.CELL_STATE_DRAINING, S.CELL_STATE_BOUND)).toBe(false);
    for (const s of path.slice(0, 5)) expect(canTransition(s, S.CELL_STATE_TERMINATING)).toBe(s !== S.CELL_STATE_UNSPECIFIED);
  });
});
