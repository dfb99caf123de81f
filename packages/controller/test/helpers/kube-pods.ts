// Reading and waiting on a pod through the real kubectl of the harness's kube-apiserver, for the
// virtual-node tests. A wait that runs out says why: the pod's status, its events and the end of
// the controller's log (debug lines left out), so a failure on CI can be read without a rerun.
import { waitFor, type KubeApiserver } from '@cello/testkit';

export interface KubePods<P> {
  /** The pod as `kubectl get pod -o json` shows it; undefined if it does not exist. */
  getPod(name: string): Promise<P | undefined>;
  /** Waits (with a deadline, `timeoutMs` or the default given to kubePods) until `pred` holds for the pod. */
  waitPod(name: string, what: string, pred: (p: P) => boolean, timeoutMs?: number): Promise<P>;
}

/**
 * `kube` and `controllerLog` are read at each call: the tests assign the API server and the
 * cluster in beforeAll, after the module-level call of this function.
 */
export function kubePods<P extends { status?: unknown }>(kube: () => KubeApiserver, controllerLog: () => string, o: { timeoutMs: number }): KubePods<P> {
  const getPod = async (name: string): Promise<P | undefined> => {
    const r = await kube().kubectl(['get', 'pod', name, '-o', 'json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as P) : undefined;
  };
  const waitPod = async (name: string, what: string, pred: (p: P) => boolean, timeoutMs = o.timeoutMs): Promise<P> => {
    try {
      return await waitFor(
        `pod ${name} ${what}`,
        async () => {
          const p = await getPod(name);
          return p && pred(p) ? p : undefined;
        },
        { timeoutMs, intervalMs: 250 },
      );
    } catch (err) {
      const p = await getPod(name);
      const ev = await kube().kubectl(['get', 'events', '--field-selector', `involvedObject.name=${name}`]);
      const log = controllerLog()
        .split('\n')
        .filter((l) => !l.includes('"level":20'))
        .slice(-15)
        .join('\n');
      throw new Error(`${(err as Error).message}\npod status: ${JSON.stringify(p?.status)}\nevents:\n${ev.stdout}\ncontroller log:\n${log}`);
    }
  };
  return { getPod, waitPod };
}
