// The error model every package shares: each code's gRPC status, and what toStatus answers.
import { status as Status } from '@grpc/grpc-js';
import { podFromManifest } from '../src/manifest/index.js';
import { parseQuantity } from '../src/quantity.js';
import { splitHostPort } from '../src/net.js';
import { describe, expect, it } from 'vitest';
import { CelloError, errMsg, grpcCodeName, grpcStatus, toStatus, type ErrorCode } from '../src/errors.js';

describe('toStatus', () => {
  it('maps every code to its gRPC status, with the message as details', () => {
    const want: Record<ErrorCode, Status> = {
      InvalidArgument: Status.INVALID_ARGUMENT,
      NotFound: Status.NOT_FOUND,
      AlreadyExists: Status.ALREADY_EXISTS,
      Conflict: Status.ABORTED,
      FailedPrecondition: Status.FAILED_PRECONDITION,
      PermissionDenied: Status.PERMISSION_DENIED,
      Unauthenticated: Status.UNAUTHENTICATED,
      ResourceExhausted: Status.RESOURCE_EXHAUSTED,
      Unavailable: Status.UNAVAILABLE,
      DeadlineExceeded: Status.DEADLINE_EXCEEDED,
      Unimplemented: Status.UNIMPLEMENTED,
      Internal: Status.INTERNAL,
    };
    for (const [code, st] of Object.entries(want) as [ErrorCode, Status][]) {
      const se = toStatus(new CelloError(code, `${code} happened`));
      expect(se.code).toBe(st);
      expect(grpcStatus(code)).toBe(st);
      expect(se.details).toBe(`${code} happened`);
      expect(se.message).toBe(`${code} happened`);
      expect(se.metadata).toBeDefined();
    }
  });

  it('passes an error that already carries a gRPC status through unchanged', () => {
    const relayed = Object.assign(new Error('14 UNAVAILABLE: agent gone'), { code: Status.UNAVAILABLE, details: 'agent gone' });
    expect(toStatus(relayed)).toBe(relayed);
  });

  it('answers anything else as INTERNAL with its message', () => {
    expect(toStatus(new Error('boom'))).toMatchObject({ code: Status.INTERNAL, details: 'boom' });
    expect(toStatus('plain string')).toMatchObject({ code: Status.INTERNAL, details: 'plain string' });
  });

  it('keeps the subclass name and the cause', () => {
    class Refused extends CelloError {}
    const cause = new Error('ENOENT');
    const e = new Refused('NotFound', 'gone', { cause });
    expect(e.name).toBe('Refused');
    expect(e.cause).toBe(cause);
    expect(toStatus(e)).toMatchObject({ name: 'Refused', code: Status.NOT_FOUND, details: 'gone' });
  });
});

describe('errMsg', () => {
  it("shows a gRPC error's details, else the message", () => {
    expect(errMsg(Object.assign(new Error('14 UNAVAILABLE: agent gone'), { code: Status.UNAVAILABLE, details: 'agent gone' }))).toBe('agent gone');
    expect(errMsg(new Error('boom'))).toBe('boom');
    expect(errMsg('plain')).toBe('plain');
  });
});

describe('grpcCodeName', () => {
  it('names every canonical code as gRPC spells it, and UNKNOWN for anything else', () => {
    expect(grpcCodeName(Status.OK)).toBe('OK');
    expect(grpcCodeName(Status.RESOURCE_EXHAUSTED)).toBe('RESOURCE_EXHAUSTED');
    expect(grpcCodeName(Status.UNAUTHENTICATED)).toBe('UNAUTHENTICATED');
    for (let c = 0; c <= 16; c++) expect(grpcCodeName(c)).toMatch(/^[A-Z_]+$/);
    expect(grpcCodeName(99)).toBe('UNKNOWN');
    expect(grpcCodeName(-1)).toBe('UNKNOWN');
  });
});

describe('every error the proto package raises is a CelloError with a stable code', () => {
  it('bad manifests, quantities and host:port strings are InvalidArgument, answered as INVALID_ARGUMENT', () => {
    const raised: unknown[] = [];
    for (const f of [() => podFromManifest('kind: Deployment'), () => parseQuantity('12 apples'), () => splitHostPort('no-port')]) {
      try {
        f();
      } catch (err) {
        raised.push(err);
      }
    }
    expect(raised.map((e) => (e as Error).name)).toEqual(['ManifestError', 'QuantityError', 'HostPortError']);
    for (const e of raised) {
      expect(e).toBeInstanceOf(CelloError);
      expect((e as CelloError).code).toBe('InvalidArgument');
      expect(toStatus(e).code).toBe(Status.INVALID_ARGUMENT);
    }
  });
});
