// The agent's errors are CelloErrors: each kind carries the code its gRPC answer is made from.
import { status as Status } from '@grpc/grpc-js';
import { CelloError, grpcStatus, toStatus, type ErrorCode } from '@cello/proto';
import { describe, expect, it } from 'vitest';
import { LogsError } from '../src/logs/index.js';
import { GenerationError } from '../src/pod/pod-manager.js';
import { InvalidPodError } from '../src/pod/validate.js';
import { PortForwardError } from '../src/portforward/index.js';
import { TicketLimitError } from '../src/portforward/tickets.js';

describe('agent error kinds', () => {
  it('carry a stable code, their own name, and map through toStatus', () => {
    const cases: [CelloError, string, ErrorCode, Status][] = [
      [new InvalidPodError('spec.containers[0].image', 'must not be empty'), 'InvalidPodError', 'InvalidArgument', Status.INVALID_ARGUMENT],
      [new GenerationError('generation 1 is older than the applied generation 2'), 'GenerationError', 'FailedPrecondition', Status.FAILED_PRECONDITION],
      [new LogsError('NotFound', 'previous terminated instance not found'), 'LogsError', 'NotFound', Status.NOT_FOUND],
      [new LogsError('InvalidArgument', 'tail_lines must not be negative'), 'LogsError', 'InvalidArgument', Status.INVALID_ARGUMENT],
      [new TicketLimitError('too many port-forward tickets outstanding'), 'TicketLimitError', 'ResourceExhausted', Status.RESOURCE_EXHAUSTED],
      [new PortForwardError('connection refused'), 'PortForwardError', 'Unavailable', Status.UNAVAILABLE],
    ];
    for (const [e, name, code, st] of cases) {
      expect(e).toBeInstanceOf(CelloError);
      expect(e.name).toBe(name);
      expect(e.code).toBe(code);
      expect(grpcStatus(e.code)).toBe(st);
      expect(toStatus(e)).toMatchObject({ code: st, details: e.message });
    }
  });
});
