// Compute Engine's long-running operations: an insert or delete answers at once with an
// Operation, and its outcome (an error such as ZONE_RESOURCE_POOL_EXHAUSTED included) is known
// only when the operation is DONE. zoneOperations.wait blocks up to two minutes server-side;
// it is called again until DONE or the caller's deadline, never without one.
import type { GlobalOperationsClient, protos, ZoneOperationsClient } from '@google-cloud/compute';

type Operation = protos.google.cloud.compute.v1.IOperation;

/** GCE's operation error codes that mean "no capacity here now": try the next zone, model or type. */
export const CAPACITY_CODES = new Set([
  'ZONE_RESOURCE_POOL_EXHAUSTED',
  'ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS',
  'QUOTA_EXCEEDED',
  'RESOURCE_POOL_EXHAUSTED',
  'STOCKOUT',
  'MACHINE_TYPE_NOT_IN_ZONE',
]);

/** An operation that ended with an error: its first error code and every message. */
export class OperationError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly operation: Operation,
  ) {
    super(message);
  }
}

export class OperationTimeoutError extends Error {}

/** How long one wait call may block: the server's own limit is 2 minutes. */
const WAIT_SLICE_MS = 60_000;

export async function waitOperation(clients: { zone: ZoneOperationsClient; global: GlobalOperationsClient }, project: string, op: Operation, deadline: number): Promise<Operation> {
  let cur = op;
  const zoneUrl = op.zone ?? undefined;
  const zone = zoneUrl ? zoneUrl.slice(zoneUrl.lastIndexOf('/') + 1) : undefined;
  while (cur.status !== 'DONE') {
    const left = deadline - Date.now();
    if (left <= 0) throw new OperationTimeoutError(`operation ${op.name} (${op.operationType} ${op.targetLink}) did not finish in time`);
    const timeout = Math.max(1000, Math.min(left, WAIT_SLICE_MS));
    const [next] = zone ? await clients.zone.wait({ project, zone, operation: op.name! }, { timeout }) : await clients.global.wait({ project, operation: op.name! }, { timeout });
    cur = next;
  }
  const errs = cur.error?.errors ?? [];
  if (errs.length > 0) {
    const code = errs[0]!.code ?? 'UNKNOWN';
    throw new OperationError(code, `${op.operationType ?? 'operation'} ${op.targetLink ?? ''}: ${errs.map((e) => `${e.code}: ${e.message}`).join('; ')}`, cur);
  }
  return cur;
}

/** The HTTP status of a failed API call (the REST transport's GoogleError), if any. */
export function httpStatus(err: unknown): number | undefined {
  if (err && typeof err === 'object') {
    const e = err as { code?: unknown; status?: unknown; response?: { status?: unknown } };
    // gax maps HTTP errors to gRPC codes: 5 NOT_FOUND, 6 ALREADY_EXISTS, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED.
    if (e.code === 5) return 404;
    if (e.code === 6) return 409;
    if (typeof e.response?.status === 'number') return e.response.status;
    if (typeof e.status === 'number' && e.status >= 100) return e.status;
  }
  return undefined;
}

/**
 * A synchronous refusal that is about capacity: a quota error (403 quotaExceeded), resource
 * exhaustion, or a machine type this zone does not offer (the snapshot catalog cannot tell which
 * zones have a type; GCE answers 400 "does not exist in zone"). Its code, or undefined.
 */
export function syncCapacityCode(err: unknown): string | undefined {
  const msg = String((err as Error)?.message ?? '');
  if (/quotaExceeded|QUOTA_EXCEEDED|Quota '[A-Z_]+' exceeded/i.test(msg) || (err as { code?: unknown })?.code === 8) return 'QUOTA_EXCEEDED';
  if (/ZONE_RESOURCE_POOL_EXHAUSTED|does not have enough resources/i.test(msg)) return 'ZONE_RESOURCE_POOL_EXHAUSTED';
  if (/machineType.*does not exist in zone/is.test(msg)) return 'MACHINE_TYPE_NOT_IN_ZONE';
  return undefined;
}
