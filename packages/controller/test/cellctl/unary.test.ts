// cellctl's unary requests are built by the generated fromPartial: a field the caller leaves out
// is encoded as its proto default, never as the text "undefined" a plain object would send.
import { describe, expect, it } from 'vitest';
import { ControllerService, ListPodsRequest } from '@cello/proto/controller';
import { buildRequest, type UnaryMethod } from '../../src/cellctl/unary.js';

const unaryMethods = Object.entries(ControllerService)
  .filter(([, d]) => !d.requestStream && !d.responseStream)
  .map(([m]) => m as UnaryMethod);

describe('buildRequest', () => {
  it('encodes a string field the caller left out as empty', () => {
    const wire = ListPodsRequest.encode(buildRequest('listPods', { namespace: 'team-a' })).finish();
    expect(ListPodsRequest.decode(wire)).toEqual({ namespace: 'team-a', labelSelector: '' });
  });

  it('is what a plain object is not: handed to the encoder as is, the missing field goes out as "undefined"', () => {
    const wire = ListPodsRequest.encode({ namespace: 'team-a' } as ListPodsRequest).finish();
    expect(ListPodsRequest.decode(wire).labelSelector).toBe('undefined');
  });

  it('knows the request type of every unary controller RPC; an empty partial is an empty message', () => {
    expect(unaryMethods.length).toBeGreaterThanOrEqual(10);
    for (const m of unaryMethods) {
      const req = buildRequest(m, {});
      expect(ControllerService[m].requestSerialize(req as never).length, m).toBe(0);
    }
  });
});
