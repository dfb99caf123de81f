import { status as Status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { CelloError, grpcStatus, toStatus, type ErrorCode } from '../src/errors.js';
import { ConfigError } from '../src/config.js';

describe('ConfigError', () => {
  it('keeps the subclass, its name and the cause', () => {
    const cause = new Error('ENOENT');
    const e = new ConfigError('/etc/cello/controller.yaml: not found', { cause });
    expect(e).toBeInstanceOf(ConfigError);
    expect(e).toBeInstanceOf(CelloError);
    expect(e.name).toBe('ConfigError');
    expect(e.code).toBe('InvalidArgument');
    expect(e.cause).toBe(cause);
    expect(toStatus(e).code).toBe(Status.INVALID_ARGUMENT);
  });
});

describe('error kinds', () => {
  it('every error the controller raises on purpose is a CelloError with a stable code', async () => {
    const { TransitionError } = await import('../src/cells/state.js');
    const { CapacityError, UnknownInstanceTypeError } = await import('../src/providers/provider.js');
    const { MissingReferenceError } = await import('../src/k8s/node/manifest.js');
    const { HeaderBlockTooLarge } = await import('../src/k8s/kubelet/spdy/framing.js');
    const { StoreLockedError } = await import('../src/store/lockfile.js');
    const { BootstrapTokenError } = await import('../src/security/tokens.js');
    const { SelectionError } = await import('../src/selection/selection.js');
    const { CellState } = await import('@cello/proto/controller');
    const cases: [CelloError, string, ErrorCode][] = [
      [new TransitionError(CellState.CELL_STATE_TERMINATED, CellState.CELL_STATE_READY), 'TransitionError', 'FailedPrecondition'],
      [new CapacityError('no capacity', 't3.small'), 'CapacityError', 'ResourceExhausted'],
      [new UnknownInstanceTypeError('no such type', 'x.small'), 'UnknownInstanceTypeError', 'InvalidArgument'],
      [new MissingReferenceError('Secret', 's', 'default'), 'MissingReferenceError', 'NotFound'],
      [new HeaderBlockTooLarge(1024), 'HeaderBlockTooLarge', 'ResourceExhausted'],
      [new StoreLockedError('/x/lock', { pid: 1, host: 'h', acquiredAt: 'now' } as never), 'StoreLockedError', 'FailedPrecondition'],
      [new BootstrapTokenError('expired', 'c1', 'too late'), 'BootstrapTokenError', 'Unauthenticated'],
      [new SelectionError('bad annotation', 'InvalidAnnotation'), 'SelectionError', 'InvalidArgument'],
      [new SelectionError('too big', 'NoFittingInstanceType'), 'SelectionError', 'FailedPrecondition'],
    ];
    for (const [e, name, code] of cases) {
      expect(e).toBeInstanceOf(CelloError);
      expect(e.name).toBe(name);
      expect(e.code).toBe(code);
      expect(toStatus(e).code).toBe(grpcStatus(code));
    }
  });
});

describe('store, sealing and bootstrap error kinds', () => {
  it('carry the codes callers branch on', async () => {
    const { ConflictError, CompactedError, StoreClosedError, NotLeaderError, InvalidEntryError } = await import('../src/store/store.js');
    const { UnsealError } = await import('../src/security/sealed.js');
    const { BootstrapError } = await import('../src/bootstrap/bootstrap-cell.js');
    const cases: [CelloError, string, ErrorCode][] = [
      [new ConflictError('/pods/a', 1, 2), 'ConflictError', 'Conflict'],
      [new InvalidEntryError('key must be a non-empty string'), 'InvalidEntryError', 'InvalidArgument'],
      [new CompactedError(1, 5), 'CompactedError', 'FailedPrecondition'],
      [new StoreClosedError('closed'), 'StoreClosedError', 'Unavailable'],
      [new NotLeaderError('controller', 'me'), 'NotLeaderError', 'Unavailable'],
      [new UnsealError('secret default/s'), 'UnsealError', 'Internal'],
      [new BootstrapError('c1', 'no agent answered', Status.UNAVAILABLE), 'BootstrapError', 'Unavailable'],
      [new BootstrapError('c1', 'bad CSR'), 'BootstrapError', 'FailedPrecondition'],
    ];
    for (const [e, name, code] of cases) {
      expect(e).toBeInstanceOf(CelloError);
      expect(e.name).toBe(name);
      expect(e.code).toBe(code);
    }
  });
});

describe('KubeApiError', () => {
  it('keeps the API server HTTP status apart from the model code', async () => {
    const { KubeApiError, isConflict, isGone, isNotFound } = await import('../src/k8s/client/rest.js');
    const want: [number, ErrorCode][] = [
      [400, 'InvalidArgument'],
      [401, 'Unauthenticated'],
      [403, 'PermissionDenied'],
      [404, 'NotFound'],
      [409, 'Conflict'],
      [410, 'FailedPrecondition'],
      [422, 'InvalidArgument'],
      [429, 'ResourceExhausted'],
      [503, 'Unavailable'],
      [302, 'Internal'],
    ];
    for (const [http, code] of want) {
      const e = new KubeApiError(http, '', `GET /x: ${http}`);
      expect(e).toBeInstanceOf(CelloError);
      expect(e.httpStatus).toBe(http);
      expect(e.code).toBe(code);
    }
    expect(isNotFound(new KubeApiError(404, 'NotFound', 'x'))).toBe(true);
    expect(isConflict(new KubeApiError(409, 'Conflict', 'x'))).toBe(true);
    expect(isGone(new KubeApiError(410, 'Expired', 'x'))).toBe(true);
    expect(isGone(new KubeApiError(404, 'NotFound', 'x'))).toBe(false);
  });
});
