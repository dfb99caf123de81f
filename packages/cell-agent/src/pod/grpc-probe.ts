// The gRPC probe as the kubelet runs it (pkg/probe/grpc): one grpc.health.v1.Health/Check call
// to the pod's IP and the probe's port, plaintext, within the probe's timeout. SERVING passes;
// any other answer, an unreachable port or a server without the health service fails, with the
// kubelet's messages.
import { credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { HealthCheckResponse_ServingStatus, HealthClient, healthCheckResponse_ServingStatusToJSON } from '@cello/proto/health';
import { isIPv6 } from 'node:net';

export interface GrpcProbeResult {
  ok: boolean;
  message: string;
}

export function grpcHealthCheck(host: string, port: number, service: string, timeoutMs: number): Promise<GrpcProbeResult> {
  const address = `${isIPv6(host) ? `[${host}]` : host}:${port}`;
  const client = new HealthClient(address, credentials.createInsecure(), {
    'grpc.primary_user_agent': 'kube-probe/cello',
    // One attempt per probe period, as the kubelet's dial: no retries or reconnect back-off carried over.
    'grpc.enable_retries': 0,
  });
  const seconds = `${timeoutMs / 1000}s`;
  return new Promise<GrpcProbeResult>((resolve) => {
    client.check({ service }, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, res) => {
      if (err) {
        if (err.code === GrpcStatus.UNIMPLEMENTED)
          return resolve({ ok: false, message: `this server does not implement the grpc health protocol (grpc.health.v1.Health): ${err.details}` });
        if (err.code === GrpcStatus.DEADLINE_EXCEEDED || err.code === GrpcStatus.UNAVAILABLE)
          return resolve({ ok: false, message: `timeout: failed to connect service "${address}" within ${seconds}: ${err.details}` });
        return resolve({ ok: false, message: `error: health rpc probe failed: ${err.details}` });
      }
      if (res.status !== HealthCheckResponse_ServingStatus.SERVING)
        return resolve({ ok: false, message: `service unhealthy (responded with "${healthCheckResponse_ServingStatusToJSON(res.status)}")` });
      resolve({ ok: true, message: '' });
    });
  }).finally(() => client.close());
}
