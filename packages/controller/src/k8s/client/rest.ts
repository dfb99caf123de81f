// A small JSON client for the Kubernetes REST API on top of client-node's KubeConfig (which
// loads kubeconfig files and in-cluster service-account credentials). Raw paths keep every
// request explicit: merge patches to status subresources, watches with resourceVersion, and
// preconditions on deletes, with errors that carry the API's status code and message.
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { KubeConfig } from '@kubernetes/client-node';
import { CelloError, type ErrorCode } from '../../errors.js';

/** The model's code for an API server's HTTP status (410 Gone: a watch's resourceVersion expired). */
function codeOfHttp(httpStatus: number): ErrorCode {
  switch (httpStatus) {
    case 400:
    case 422:
      return 'InvalidArgument';
    case 401:
      return 'Unauthenticated';
    case 403:
      return 'PermissionDenied';
    case 404:
      return 'NotFound';
    case 409:
      return 'Conflict';
    case 410:
      return 'FailedPrecondition';
    case 429:
      return 'ResourceExhausted';
    default:
      return httpStatus >= 500 ? 'Unavailable' : 'Internal';
  }
}

export class KubeApiError extends CelloError {
  constructor(
    readonly httpStatus: number,
    readonly reason: string,
    message: string,
  ) {
    super(codeOfHttp(httpStatus), message);
  }
}

export const isNotFound = (err: unknown) => err instanceof KubeApiError && err.httpStatus === 404;
export const isConflict = (err: unknown) => err instanceof KubeApiError && err.httpStatus === 409;
export const isGone = (err: unknown) => err instanceof KubeApiError && err.httpStatus === 410;

export type WatchEvent<T> = { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR'; object: T };

export function loadKubeConfig(kubeconfig?: string): KubeConfig {
  const kc = new KubeConfig();
  if (kubeconfig) kc.loadFromFile(kubeconfig);
  else kc.loadFromDefault(); // in-cluster service account when KUBERNETES_SERVICE_HOST is set
  if (!kc.getCurrentCluster()) throw new Error(`kubernetes.kubeconfig: no current cluster in ${kubeconfig ?? 'the default kubeconfig'}`);
  return kc;
}

export class KubeRest {
  readonly server: URL;

  constructor(
    readonly kc: KubeConfig,
    private readonly userAgent = 'cello-virtual-node',
  ) {
    this.server = new URL(kc.getCurrentCluster()!.server);
  }

  private async open(method: string, path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<{ req: ReturnType<typeof httpsRequest> }> {
    const url = new URL(path, this.server);
    const opts: RequestOptions = {
      method,
      hostname: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      headers: { 'user-agent': this.userAgent, accept: 'application/json', ...headers },
      ...(signal ? { signal } : {}),
    };
    await this.kc.applyToHTTPSOptions(opts);
    const req = url.protocol === 'https:' ? httpsRequest(opts) : httpRequest(opts);
    return { req };
  }

  async request<T>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const { req } = await this.open(method, path, payload ? { 'content-type': contentType, 'content-length': String(payload.length) } : {}, AbortSignal.timeout(30_000));
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.end(payload);
    });
    const chunks: Buffer[] = [];
    for await (const c of res) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if ((res.statusCode ?? 500) >= 300) {
      let reason = '';
      let message = text;
      try {
        const s = JSON.parse(text) as { reason?: string; message?: string };
        reason = s.reason ?? '';
        message = s.message ?? text;
      } catch {
        /* not a Status object */
      }
      throw new KubeApiError(res.statusCode ?? 500, reason, `${method} ${path}: ${res.statusCode} ${message}`);
    }
    return (text ? JSON.parse(text) : undefined) as T;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }
  post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }
  put<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', path, body);
  }
  /** JSON merge patch: only the fields given change, so other writers' fields are left alone. */
  mergePatch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body, 'application/merge-patch+json');
  }
  /** Strategic merge patch: lists keyed by name/type (conditions, containerStatuses) merge item by item. */
  strategicPatch<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('PATCH', path, body, 'application/strategic-merge-patch+json');
  }
  delete<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('DELETE', path, body);
  }

  /**
   * One watch request: calls onEvent for each event until the server ends the stream, the
   * signal aborts, or an ERROR event arrives (returned so the caller can relist on 410 Gone).
   */
  async watch<T>(path: string, onEvent: (ev: WatchEvent<T>) => void, signal: AbortSignal): Promise<void> {
    const { req } = await this.open('GET', path, {}, signal);
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.end();
    });
    if ((res.statusCode ?? 500) >= 300) {
      res.resume();
      throw new KubeApiError(res.statusCode ?? 500, '', `watch ${path}: ${res.statusCode}`);
    }
    let buf = '';
    try {
      for await (const chunk of res) {
        buf += (chunk as Buffer).toString('utf8');
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue;
          const ev = JSON.parse(line) as WatchEvent<T>;
          if (ev.type === 'ERROR') {
            const st = ev.object as unknown as { code?: number; message?: string };
            throw new KubeApiError(st.code ?? 500, '', `watch ${path}: ${st.message ?? 'error'}`);
          }
          onEvent(ev);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    }
  }
}
