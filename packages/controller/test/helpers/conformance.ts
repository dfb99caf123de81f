// The upstream Kubernetes end-to-end suite (e2e.test, built by scripts/k8s/build-e2e.sh) against
// the harness's control plane with Cello's virtual node as the cluster's ONLY node: the real
// kube-apiserver, kube-scheduler and kube-controller-manager (nearly all its controllers),
// CoreDNS as a pod on a cell behind kube-dns, and the controller daemon with the local provider,
// its node untainted so every pod the suite makes runs on a cell. The suite's images come from
// a registry seeded by scripts/k8s/build-e2e-images.sh, pointed at by KUBE_TEST_REPO_LIST.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deployClusterDns, hostAddress, pushCoreDns, startKubeApiserver, type ClusterDns, type KubeApiserver } from '@cello/testkit';
import { startFixtureRegistry, type Registry } from './cluster.js';
import { KubeCluster } from './kube-cluster.js';

const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', 'scripts', 'k8s');
export const CONFORMANCE_NODE = 'cello-conformance';

/**
 * kube-controller-manager's controllers for the suite: all on-by-default ones (StatefulSets,
 * DaemonSets, CronJobs, ResourceQuota, PodGC, disruption, ...) except the node lifecycle
 * controller, which would taint and evict from a node whose status it judges by kubelet
 * heartbeats; the virtual node's status is written by the controller instead.
 */
const CONTROLLERS = ['*', '-node-lifecycle-controller'];

function runScript(script: string, args: string[] = []): string {
  const r = spawnSync('bash', [join(SCRIPTS, script), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
  if (r.status !== 0) throw new Error(`scripts/k8s/${script} failed (exit ${r.status}):\n${(r.stderr ?? '').slice(-4000)}`);
  return r.stdout.trim().split('\n').pop()!;
}

export interface ConformanceCluster {
  kube: KubeApiserver;
  cl: KubeCluster;
  registry: Registry;
  dns: ClusterDns;
  /** The e2e.test binary. */
  e2eTest: string;
  /** The KUBE_TEST_REPO_LIST file: the suite's registries rewritten to the test registry. */
  repoList: string;
  stop(): Promise<void>;
}

export async function startConformanceCluster(o: { maxCells: number; dir: string }): Promise<ConformanceCluster> {
  const e2eTest = join(runScript('build-e2e.sh'), 'e2e.test');
  let registry: Registry | undefined;
  let kube: KubeApiserver | undefined;
  let cl: KubeCluster | undefined;
  let dns: ClusterDns | undefined;
  const stop = async () => {
    await dns?.remove().catch(() => undefined);
    await cl?.stop();
    await kube?.stop();
    await registry?.server.stop();
  };
  try {
    registry = await startFixtureRegistry();
    runScript('build-e2e-images.sh', [registry.server.host]);
    mkdirSync(o.dir, { recursive: true });
    const reg = registry.server.host;
    const repoList = join(o.dir, 'repo-list.yaml');
    // The registries the suite pulls from; the invalid / private / authenticated ones stay as
    // they are (their specs expect a pull to fail).
    writeFileSync(
      repoList,
      [
        `promoterE2eRegistry: ${reg}/e2e-test-images`,
        `buildImageRegistry: ${reg}/build-image`,
        `gcEtcdRegistry: ${reg}`,
        `gcRegistry: ${reg}`,
        `sigStorageRegistry: ${reg}/sig-storage`,
        `dockerLibraryRegistry: ${reg}/library`,
        `cloudProviderGcpRegistry: ${reg}/cloud-provider-gcp`,
        '',
      ].join('\n'),
    );
    // The API server advertises this host's own address, as a cluster's control plane advertises
    // one its nodes reach: the `kubernetes` Service (and its Endpoints, which a spec checks) lead
    // pods on cells to it through their Service rules.
    kube = await startKubeApiserver({ controllers: CONTROLLERS, advertiseAddress: hostAddress() });
    const created = await kube.kubectl(['create', 'namespace', 'cello-system']);
    if (created.code !== 0) throw new Error(`kubectl create namespace cello-system: ${created.stderr}`);
    const serving = await kube.issueCert('kubelet-serving', { cn: CONFORMANCE_NODE, ips: ['127.0.0.1'], dns: [CONFORMANCE_NODE] });
    cl = new KubeCluster({ registry, warm: 0, healthSeconds: 5, gcIntervalSeconds: 5, retainFinishedSeconds: 30 }, kube, serving, {
      nodeName: CONFORMANCE_NODE,
      maxCells: o.maxCells,
      // A cluster's settings, not the test helper's (tokens refreshed every few seconds re-apply
      // each pod to its cell that often). Secrets and ConfigMaps are re-read every 10 s: the
      // kubelet's watch-based manager sees edits within seconds too.
      kubernetes: { taint: null, tokenRefreshRatio: 0.8, dataSyncSeconds: 10, nodeStatusSeconds: 10 },
    });
    await cl.start();
    await cl.waitNodeRegistered(60_000);
    dns = await deployClusterDns(kube, { image: await pushCoreDns(registry.server), clusterIP: '10.0.0.10', domain: 'cluster.local', timeoutMs: 180_000 });
    const cluster = cl;
    return { kube, cl: cluster, registry, dns, e2eTest, repoList, stop };
  } catch (err) {
    const log = cl?.controllerLog.split('\n').slice(-20).join('\n') ?? '';
    await stop();
    throw new Error(`${(err as Error).message}\n${log}`);
  }
}

export interface E2eRun {
  code: number | null;
  junit: string;
  log: string;
}

export interface E2eOptions {
  dir: string;
  focus: string;
  skip?: string;
  timeoutMinutes: number;
  /**
   * Ginkgo processes running specs at once (the ginkgo CLI's --procs, e2e.test as the suite
   * binary). Specs labelled Serial (e2e's [Serial], which the framework turns into ginkgo's
   * Serial decorator) still run alone: ginkgo holds them until the parallel ones are done and
   * runs them on process 1. Default 1: e2e.test by itself, serially.
   */
  procs?: number;
  echo?: boolean;
}

/**
 * The command that runs the suite: e2e.test itself for one process, else the ginkgo CLI built
 * beside it (scripts/k8s/build-e2e.sh) with e2e.test as a precompiled suite, as upstream's
 * hack/ginkgo-e2e.sh runs it. Ginkgo's own flags go to the CLI (which collects every process's
 * specs into the one JUnit report); the rest follow `--` to each e2e.test process.
 */
export function e2eCommand(c: Pick<ConformanceCluster, 'e2eTest' | 'kube'>, o: E2eOptions): { cmd: string; args: string[]; junit: string } {
  const procs = o.procs ?? 1;
  if (!Number.isInteger(procs) || procs < 1) throw new Error(`procs: a whole number >= 1 is needed, got ${procs}`);
  const junit = join(o.dir, 'junit.xml');
  const ginkgo = [`junit-report=${junit}`, `focus=${o.focus}`, ...(o.skip ? [`skip=${o.skip}`] : []), `timeout=${o.timeoutMinutes}m`, 'no-color', 'silence-skips'];
  const suite = [
    `--kubeconfig=${c.kube.kubeconfig}`,
    `--kubectl-path=${join(c.kube.binDir, 'kubectl')}`,
    '--provider=skeleton',
    `--report-dir=${o.dir}`,
    '--disable-log-dump',
    '--allowed-not-ready-nodes=0',
    '--node-schedulable-timeout=2m',
    '--system-pods-startup-timeout=2m',
  ];
  if (procs === 1) return { cmd: c.e2eTest, args: [...suite, ...ginkgo.map((f) => `--ginkgo.${f}`)], junit };
  return { cmd: join(dirname(c.e2eTest), 'ginkgo'), args: [`--procs=${procs}`, ...ginkgo.map((f) => `--${f}`), c.e2eTest, '--', ...suite], junit };
}

/**
 * Runs the suite (see e2eCommand) with `focus` / `skip` as ginkgo regular expressions; writes its
 * output to `dir`/e2e.log and the JUnit report to `dir`/junit.xml. `timeoutMinutes` bounds the
 * whole run (ginkgo interrupts the running specs and reports the rest as not run).
 */
export async function runE2e(c: ConformanceCluster, o: E2eOptions): Promise<E2eRun> {
  mkdirSync(o.dir, { recursive: true });
  const log = join(o.dir, 'e2e.log');
  const { cmd, args, junit } = e2eCommand(c, o);
  const out = createWriteStream(log);
  out.write(`$ ${[cmd, ...args].join(' ')}\n`);
  const child = spawn(cmd, args, { env: { ...process.env, KUBE_TEST_REPO_LIST: c.repoList }, stdio: ['ignore', 'pipe', 'pipe'] });
  for (const s of [child.stdout, child.stderr]) {
    s.on('data', (b: Buffer) => {
      out.write(b);
      if (o.echo) process.stdout.write(b);
    });
  }
  // The suite's own timeout ends it; this one only catches a hung binary. SIGTERM first: the
  // ginkgo CLI passes it on to its e2e.test processes (a SIGKILLed CLI would leave them running).
  let kill: NodeJS.Timeout | undefined;
  const hard = setTimeout(
    () => {
      child.kill('SIGTERM');
      kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
    },
    (o.timeoutMinutes + 5) * 60_000,
  );
  const code = await new Promise<number | null>((r) => child.once('exit', (c2) => r(c2)));
  clearTimeout(hard);
  clearTimeout(kill);
  await new Promise<void>((r) => out.end(r));
  return { code, junit, log };
}
