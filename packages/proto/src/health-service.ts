import type { ServerUnaryCall, ServerWritableStream, sendUnaryData, UntypedServiceImplementation } from '@grpc/grpc-js';
import { status as GrpcStatus } from '@grpc/grpc-js';
import {
  type HealthCheckRequest,
  type HealthCheckResponse,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthService as HealthServiceDefinition,
} from './gen/grpc/health/v1/health.js';

/**
 * The standard grpc.health.v1.Health service. The empty service name "" stands for the
 * whole server. Watchers are pushed every change; nothing polls.
 */
export class HealthService {
  readonly definition = HealthServiceDefinition;
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<string, Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>>();

  constructor(initial: Record<string, ServingStatus> = { '': ServingStatus.SERVING }) {
    for (const [k, v] of Object.entries(initial)) this.statuses.set(k, v);
  }

  setStatus(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const w of this.watchers.get(service) ?? []) w.write({ status });
  }

  /** Marks every service NOT_SERVING, e.g. while shutting down. */
  shutdown(): void {
    for (const k of this.statuses.keys()) this.setStatus(k, ServingStatus.NOT_SERVING);
  }

  readonly implementation: UntypedServiceImplementation = {
    check: (call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>, cb: sendUnaryData<HealthCheckResponse>) => {
      const s = this.statuses.get(call.request.service);
      if (s === undefined) cb({ code: GrpcStatus.NOT_FOUND, details: `unknown service "${call.request.service}"` });
      else cb(null, { status: s });
    },
    watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
      const service = call.request.service;
      let set = this.watchers.get(service);
      if (!set) this.watchers.set(service, (set = new Set()));
      set.add(call);
      call.write({ status: this.statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN });
      call.on('cancelled', () => set.delete(call));
      call.on('close', () => set.delete(call));
    },
  };
}
