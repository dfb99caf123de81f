import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { ManifestError } from '@cello/proto';
import { SecretData } from '@cello/proto/cell';
import { ManifestParser } from '../../src/api/manifest-parser.js';

// The compiled worker (npm test builds before it tests); the sources have no .js worker to run.
const WORKER = new URL('../../dist/api/manifest-worker.js', import.meta.url);

const pod = (name: string) => `apiVersion: v1
kind: Pod
metadata: {name: ${name}, labels: {app: web}}
spec:
  containers:
  - name: c
    image: busybox
    resources: {limits: {memory: 64Mi, cpu: 250m}}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
data: {k: aGVsbG8=}
`;

describe('ManifestParser (pod manifests parsed on a worker thread)', () => {
  let parser: ManifestParser | undefined;
  afterEach(async () => {
    await parser?.close();
    parser = undefined;
  });

  it('is built: the compiled worker exists', () => {
    expect(existsSync(fileURLToPath(WORKER)), `${fileURLToPath(WORKER)} missing: run npm run build`).toBe(true);
  });

  it('parses on a worker exactly what the inline parser gives, many in flight', async () => {
    parser = new ManifestParser({ workerUrl: WORKER, threads: 2 });
    const inline = new ManifestParser({ threads: 0, workerUrl: WORKER });
    expect(parser.threads).toBe(2);
    expect(inline.threads).toBe(0);
    const names = Array.from({ length: 50 }, (_, i) => `web-${i}`);
    const got = await Promise.all(names.map((n) => parser!.parse(pod(n), { namespace: 'team-a' })));
    for (const [i, m] of got.entries()) {
      // Secret bytes cross the thread boundary as Uint8Array (Buffer inline): same bytes.
      const want = await inline.parse(pod(names[i]!), { namespace: 'team-a' });
      expect(m.pod).toEqual(want.pod);
      expect(m.configMaps).toEqual(want.configMaps);
      expect(SecretData.toJSON(m.secrets.s!)).toEqual(SecretData.toJSON(want.secrets.s!));
      expect(m.pod.metadata?.name).toBe(names[i]);
      expect(m.pod.metadata?.namespace).toBe('team-a');
      expect(Buffer.from(m.secrets.s!.data.k!).toString()).toBe('hello');
    }
  });

  it('gives back a ManifestError naming the field and the document', async () => {
    parser = new ManifestParser({ workerUrl: WORKER, threads: 1 });
    const err = await parser.parse(`${pod('pod-a')}---\napiVersion: v1\nkind: Deployment\nmetadata: {name: d}\n`, { namespace: 'default' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ManifestError);
    expect((err as ManifestError).field).toBe('kind');
    expect((err as ManifestError).document).toBe(2);
    expect((err as Error).message).toMatch(/^document 2: kind: "Deployment" is not supported/);
    const bad = await parser.parse('a: [unclosed', { namespace: 'default' }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(Error);
  });

  it('a thread that dies fails its parses instead of hanging, and is replaced', async () => {
    parser = new ManifestParser({ workerUrl: WORKER, threads: 1 });
    const workers = (parser as unknown as { workers: { terminate(): Promise<number> }[] }).workers;
    const inFlight = parser.parse(pod('pod-x'), { namespace: 'default' });
    await workers[0]!.terminate();
    await expect(inFlight).rejects.toThrow(/exited/);
    const after = await parser.parse(pod('pod-y'), { namespace: 'default' });
    expect(after.pod.metadata?.name).toBe('pod-y');
  });

  it('refuses work once closed', async () => {
    const p = new ManifestParser({ workerUrl: WORKER, threads: 1 });
    await p.close();
    await expect(p.parse(pod('pod-z'), { namespace: 'default' })).rejects.toThrow(/closed/);
  });
});
