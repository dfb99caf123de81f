// Promise wrappers over the controller's gRPC API: the virtual node drives pods through the
// controller core exactly as cellctl does, so the core stays the one place that acts on cells.
// It authenticates like any other caller: with a certificate the controller issued to the user
// system:virtual-node (group system:masters), never by being exempt.
import { Metadata, status as Status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { API_CHANNEL_OPTIONS } from '../api/auth/client.js';
import {
  ApplyPodRequest,
  ControllerClient,
  DeletePodRequest,
  GetPodRequest,
  ListCellsRequest,
  ListEventsRequest,
  ListPodsRequest,
  TopPodsRequest,
  type Cell,
  type ClusterEvent,
  type PodObject,
  type TopPodsResponse,
  type VersionResponse,
} from '@cello/proto/controller';

export class Controller {
  readonly client: ControllerClient;

  constructor(address: string, creds: ChannelCredentials) {
    this.client = new ControllerClient(address, creds, { ...API_CHANNEL_OPTIONS });
  }

  private call<T>(method: string, req: unknown, timeoutMs = 15_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!;
      fn.call(this.client, req, new Metadata(), { deadline: Date.now() + timeoutMs }, (err: ServiceError | null, r: T) => (err ? reject(err) : resolve(r)));
    });
  }

  version(timeoutMs = 3000): Promise<VersionResponse> {
    return this.call('version', {}, timeoutMs);
  }
  apply(manifest: string, namespace: string): Promise<PodObject> {
    return this.call('applyPod', ApplyPodRequest.fromPartial({ manifest, namespace }));
  }
  async get(namespace: string, name: string): Promise<PodObject | undefined> {
    try {
      return await this.call<PodObject>('getPod', GetPodRequest.fromPartial({ pod: { namespace, name } }));
    } catch (err) {
      if ((err as ServiceError).code === Status.NOT_FOUND) return undefined;
      throw err;
    }
  }
  async delete(namespace: string, name: string, gracePeriodSeconds?: number): Promise<void> {
    try {
      await this.call('deletePod', DeletePodRequest.fromPartial({ pod: { namespace, name }, ...(gracePeriodSeconds !== undefined ? { gracePeriodSeconds } : {}) }));
    } catch (err) {
      if ((err as ServiceError).code !== Status.NOT_FOUND) throw err;
    }
  }
  async events(namespace: string, name: string): Promise<ClusterEvent[]> {
    // Requests go through fromPartial: a field this code does not set (ListEventsRequest.cell,
    // added later) must encode as its default, not as "undefined".
    return (await this.call<{ events: ClusterEvent[] }>('listEvents', ListEventsRequest.fromPartial({ pod: { namespace, name } }))).events;
  }
  async list(labelSelector: string): Promise<PodObject[]> {
    return (await this.call<{ pods: PodObject[] }>('listPods', ListPodsRequest.fromPartial({ labelSelector }))).pods;
  }
  /** The running pods' usage from their agents (cellctl top pods); `namespace` empty: every namespace. */
  topPods(namespace: string): Promise<TopPodsResponse> {
    return this.call('topPods', TopPodsRequest.fromPartial({ namespace }));
  }
  async cells(): Promise<Cell[]> {
    return (await this.call<{ cells: Cell[] }>('listCells', ListCellsRequest.fromPartial({}))).cells;
  }
  close(): void {
    this.client.close();
  }
}
