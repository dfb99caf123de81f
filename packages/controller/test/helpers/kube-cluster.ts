// The controller daemon with the `kubernetes:` section of its configuration turned on (the
// virtual node in front of the local provider), for tests against the harness's real
// Kubernetes control plane (@cello/testkit startKubeApiserver).
import { readFileSync, writeFileSync } from 'node:fs';
import { parse, stringify } from 'yaml';
import { freePort, waitFor, type KubeApiserver } from '@cello/testkit';
import { Cluster, type ClusterOptions } from './cluster.js';

export interface KubeClusterOptions {
  nodeName: string;
  /** The local provider's limit, low enough to bind before this host's memory does. */
  maxCells: number;
  /** The API server address pods are given (KUBERNETES_SERVICE_HOST/PORT); default: the kubeconfig's. */
  podApiServer?: { host: string; port: number };
  /** More of the `kubernetes:` section (e.g. `taint: null` for a node every pod lands on). */
  kubernetes?: Record<string, unknown>;
}

export class KubeCluster extends Cluster {
  kubeletPort = 0;
  constructor(
    o: ClusterOptions,
    private readonly kube: KubeApiserver,
    private readonly serving: { certFile: string; keyFile: string },
    private readonly k: KubeClusterOptions,
  ) {
    super(o);
  }

  override async writeConfig(): Promise<void> {
    await super.writeConfig();
    if (!this.kubeletPort) this.kubeletPort = await freePort();
    const cfg = parse(readFileSync(this.configPath, 'utf8')) as Record<string, unknown> & { provider: Record<string, unknown> };
    cfg.provider.maxCells = this.k.maxCells;
    cfg.kubernetes = {
      enabled: true,
      nodeName: this.k.nodeName,
      kubeconfig: this.kube.kubeconfig,
      internalIP: '127.0.0.1',
      kubelet: { listen: `127.0.0.1:${this.kubeletPort}`, certFile: this.serving.certFile, keyFile: this.serving.keyFile, clientCAFile: this.kube.caFile },
      // No fixed capacity: the node is sized from the local provider's capacity() (this host),
      // written every 2 s so the tests see it follow cells and pods.
      nodeStatusSeconds: 2,
      leaderElection: { enabled: true, namespace: 'cello-system', leaseSeconds: 15 },
      // Refresh projected tokens after 0.5 % of their lifetime (3 s of the API server's 600 s
      // minimum) and re-read Secrets/ConfigMaps every 2 s, so refreshes happen within the test.
      tokenRefreshRatio: 0.005,
      dataSyncSeconds: 2,
      ...(this.k.podApiServer ? { podApiServer: this.k.podApiServer } : {}),
      ...this.k.kubernetes,
    };
    writeFileSync(this.configPath, stringify(cfg));
  }

  /** Waits (with a deadline) until the virtual node is registered in the API server. */
  async waitNodeRegistered(timeoutMs = 30_000): Promise<void> {
    await waitFor('the virtual node to register', async () => (await this.kube.kubectl(['get', 'node', this.k.nodeName])).code === 0, { timeoutMs, intervalMs: 250 }).catch(
      (err: Error) => {
        throw new Error(`${err.message}\ncontroller log:\n${this.controllerLog.slice(-3000)}`);
      },
    );
  }
}
