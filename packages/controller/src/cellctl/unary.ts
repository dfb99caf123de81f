// cellctl's one way to make a unary controller call. Every request is built by its generated
// `X.fromPartial`, so a field the caller leaves out is its proto default ('' / 0 / false): a
// plain object handed to the encoder would send a missing string field as "undefined". The
// table is checked against the service: a new unary RPC without its request type fails to compile.
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import {
  ApplyPodRequest,
  type ControllerService,
  DeletePodRequest,
  GetPodRequest,
  ListAuditRequest,
  ListCellsRequest,
  ListEventsRequest,
  ListPodsRequest,
  TopCellsRequest,
  TopPodsRequest,
  VersionRequest,
  type ControllerClient,
  type DeepPartial,
} from '@cello/proto/controller';

type Service = typeof ControllerService;
export type UnaryMethod = { [M in keyof Service]: Service[M]['requestStream'] | Service[M]['responseStream'] extends false ? M : never }[keyof Service];
export type RequestOf<M extends UnaryMethod> = Parameters<Service[M]['requestSerialize']>[0];
export type ResponseOf<M extends UnaryMethod> = ReturnType<Service[M]['responseDeserialize']>;

const REQUESTS: { [M in UnaryMethod]: { fromPartial(object: DeepPartial<RequestOf<M>>): RequestOf<M> } } = {
  applyPod: ApplyPodRequest,
  getPod: GetPodRequest,
  listPods: ListPodsRequest,
  deletePod: DeletePodRequest,
  listCells: ListCellsRequest,
  listEvents: ListEventsRequest,
  topPods: TopPodsRequest,
  topCells: TopCellsRequest,
  listAudit: ListAuditRequest,
  version: VersionRequest,
};

/** The request `method` sends for `partial`: every field left out at its proto default. */
export function buildRequest<M extends UnaryMethod>(method: M, partial: DeepPartial<RequestOf<M>>): RequestOf<M> {
  return REQUESTS[method].fromPartial(partial);
}

/** Calls `method` with the request built from `partial`, failing after `timeoutMs`. */
export function unary<M extends UnaryMethod>(client: ControllerClient, method: M, partial: DeepPartial<RequestOf<M>>, timeoutMs = 30_000): Promise<ResponseOf<M>> {
  const req = buildRequest(method, partial);
  return new Promise((resolve, reject) => {
    const fn = client[method] as unknown as (r: RequestOf<M>, m: Metadata, o: { deadline: number }, cb: (err: ServiceError | null, res: ResponseOf<M>) => void) => unknown;
    fn.call(client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}
