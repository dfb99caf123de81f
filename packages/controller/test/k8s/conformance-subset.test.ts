// A focused subset of the upstream Kubernetes conformance suite (e2e.test v1.34.4) that must stay
// green: pods, downward API, Secrets, ConfigMaps and projected volumes, emptyDir,
// logs and exec, run with Cello's virtual node as the cluster's only node (see
// test/helpers/conformance.ts and `npm run conformance` for the whole suite).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runE2e, startConformanceCluster, type ConformanceCluster } from '../helpers/conformance.js';

/** The specs, by their full text as e2e.test names them. */
const SPECS = [
  '[sig-node] ConfigMap should be consumable via environment variable [NodeConformance] [Conformance]',
  "[sig-node] Containers should be able to override the image's default command and arguments [NodeConformance] [Conformance]",
  "[sig-node] Downward API should provide container's limits.cpu/memory and requests.cpu/memory as env vars [NodeConformance] [Conformance]",
  '[sig-node] Downward API should provide pod name, namespace and IP address as env vars [NodeConformance] [Conformance]',
  '[sig-node] InitContainer [NodeConformance] should invoke init containers on a RestartNever pod [Conformance]',
  '[sig-node] Kubelet when scheduling a busybox command in a pod should print the output to logs [NodeConformance] [Conformance]',
  '[sig-node] Pods should allow activeDeadlineSeconds to be updated [NodeConformance] [Conformance]',
  '[sig-node] Pods should be submitted and removed [NodeConformance] [Conformance]',
  '[sig-node] Pods should get a host IP [NodeConformance] [Conformance]',
  '[sig-node] Pods should support retrieving logs from the container over websockets [NodeConformance] [Conformance]',
  '[sig-node] Secrets should be consumable from pods in env vars [NodeConformance] [Conformance]',
  '[sig-node] Security Context When creating a container with runAsUser should run the container with uid 65534 [LinuxOnly] [NodeConformance] [Conformance]',
  '[sig-node] Variable Expansion should allow composing env vars into new env vars [NodeConformance] [Conformance]',
  '[sig-node] Downward API should provide host IP as an env var [NodeConformance] [Conformance]',
  '[sig-node] Kubelet when scheduling a busybox command that always fails in a pod should have an terminated reason [NodeConformance] [Conformance]',
  '[sig-node] Kubelet when scheduling a read only busybox container should not write to root filesystem [LinuxOnly] [NodeConformance] [Conformance]',
  '[sig-node] Kubelet when scheduling an agnhost Pod with hostAliases should write entries to /etc/hosts [NodeConformance] [Conformance]',
  '[sig-node] Pods should be updated [NodeConformance] [Conformance]',
  '[sig-node] Security Context should support pod.Spec.SecurityContext.RunAsUser And pod.Spec.SecurityContext.RunAsGroup [LinuxOnly] [Conformance]',
  '[sig-storage] ConfigMap should be consumable from pods in volume [NodeConformance] [Conformance]',
  '[sig-storage] Downward API volume should provide podname only [NodeConformance] [Conformance]',
  '[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) [LinuxOnly] [NodeConformance] [Conformance]',
  '[sig-storage] EmptyDir volumes volume on default medium should have the correct mode [LinuxOnly] [NodeConformance] [Conformance]',
  '[sig-storage] Projected configMap should be consumable from pods in volume [NodeConformance] [Conformance]',
  '[sig-storage] Projected downwardAPI should provide podname only [NodeConformance] [Conformance]',
  '[sig-storage] Secrets should be consumable from pods in volume [NodeConformance] [Conformance]',
];

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const dir = mkdtempSync(join(tmpdir(), 'cello-conformance-'));
let cluster: ConformanceCluster | undefined;
// The suite's log and JUnit report stay for a failed run (the failure names them).
let passed = false;

beforeAll(async () => {
  cluster = await startConformanceCluster({ maxCells: 12, dir });
}, 600_000);

afterAll(async () => {
  await cluster?.stop();
  if (passed) rmSync(dir, { recursive: true, force: true });
});

it('passes every spec of the node conformance subset', async () => {
  // Two ginkgo processes (the ginkgo CLI, as `npm run conformance --parallel`): the CLI must
  // collect both processes' specs into the one JUnit report read below.
  const r = await runE2e(cluster!, { dir, focus: SPECS.map(escape).join('|'), timeoutMinutes: 8, procs: 2 });
  expect(readFileSync(r.log, 'utf8'), `see ${r.log}`).toContain('Running in parallel across 2 processes');
  const xml = readFileSync(r.junit, 'utf8');
  const results = new Map<string, string>();
  for (const m of xml.matchAll(/<testcase name="\[It\] ([^"]*?)(?: \[[^\]"]*,[^\]"]*\])?" classname="[^"]*" status="([a-z]+)"/g)) {
    const name = m[1]!
      .replace(/&#39;/g, "'")
      .replace(/&quot;/g, '"')
      .replace(/&amp;/g, '&');
    if (SPECS.includes(name)) results.set(name, m[2]!);
  }
  const notPassed = SPECS.filter((s) => results.get(s) !== 'passed').map((s) => `${s}: ${results.get(s) ?? 'not run'}`);
  expect(notPassed, `see ${r.log}`).toEqual([]);
  passed = true;
}, 600_000);
