// Which cell architectures may serve a pod: those every one of its images has a manifest for,
// that its `kubernetes.io/arch` node selector allows, and that the provider has a cell image
// for. Nothing here talks to a registry; the platforms come in already read.
import type { PodSpec } from '@cello/proto/cell';
import type { ImagePlatforms } from './image-platforms.js';
import { SelectionError } from './selection.js';

export type Arch = 'amd64' | 'arm64';
export const ARCHES: readonly Arch[] = ['amd64', 'arm64'];
export const ARCH_LABELS = ['kubernetes.io/arch', 'beta.kubernetes.io/arch'] as const;
/** `cello.dev/arch-arm64: "true"`: the label the virtual node carries for each architecture it serves. */
export const ARCH_LABEL_PREFIX = 'cello.dev/arch-';

/** Every image of the pod (init containers too), each once. */
export function podImages(spec: PodSpec): string[] {
  return [...new Set([...spec.initContainers, ...spec.containers].map((c) => c.image))];
}

export interface ArchitectureInput {
  spec: PodSpec;
  /** The platforms of each of podImages(spec); absent when image platforms are not read. */
  images?: Map<string, ImagePlatforms>;
  /** Architectures the provider has a cell image for. */
  provider: readonly Arch[];
}

/**
 * What required node affinity allows, or undefined when no term constrains the architecture. The
 * terms are ORed and a term's expressions ANDed, as the kube-scheduler reads them; expressions on
 * other keys are the kube-scheduler's business (it placed the pod on the virtual node already).
 */
function affinityArchitectures(spec: PodSpec): Set<Arch> | undefined {
  const terms = spec.requiredNodeAffinity;
  if (!terms.some((t) => t.matchExpressions.some((e) => (ARCH_LABELS as readonly string[]).includes(e.key)))) return undefined;
  const out = new Set<Arch>();
  for (const t of terms) {
    let ok = new Set<Arch>(ARCHES);
    for (const e of t.matchExpressions) {
      if (!(ARCH_LABELS as readonly string[]).includes(e.key)) continue;
      if (e.operator === 'In') ok = new Set([...ok].filter((a) => e.values.includes(a)));
      else if (e.operator === 'NotIn') ok = new Set([...ok].filter((a) => !e.values.includes(a)));
      else if (e.operator === 'DoesNotExist' || e.operator === 'Gt' || e.operator === 'Lt') ok = new Set();
    }
    for (const a of ok) out.add(a);
  }
  return out;
}

/** The architectures that may serve the pod, best first; throws SelectionError when none may. */
export function allowedArchitectures(input: ArchitectureInput): Arch[] {
  const why: string[] = [];
  let allowed = new Set<Arch>(ARCHES);
  const keep = (ok: (a: Arch) => boolean) => {
    allowed = new Set([...allowed].filter(ok));
  };
  for (const label of ARCH_LABELS) {
    const want = input.spec.nodeSelector[label];
    if (want === undefined) continue;
    keep((a) => a === want);
    why.push(`nodeSelector ${label}: ${want}`);
  }
  // The virtual node's per-architecture labels (k8s/node/node.ts), for a node that names one arch but serves more.
  for (const [label, value] of Object.entries(input.spec.nodeSelector)) {
    if (!label.startsWith(ARCH_LABEL_PREFIX) || value !== 'true') continue;
    const want = label.slice(ARCH_LABEL_PREFIX.length);
    keep((a) => a === want);
    why.push(`nodeSelector ${label}: "true"`);
  }
  const affinity = affinityArchitectures(input.spec);
  if (affinity) {
    keep((a) => affinity.has(a));
    why.push(`required node affinity allows ${affinity.size ? [...affinity].join(', ') : 'no architecture'}`);
  }
  for (const [image, p] of input.images ?? []) {
    const archs = new Set(p.platforms.map((x) => x.architecture));
    keep((a) => archs.has(a));
    why.push(`image ${image} is ${p.platforms.map((x) => `${x.os}/${x.architecture}${x.variant ? `/${x.variant}` : ''}`).join(', ')}`);
  }
  keep((a) => input.provider.includes(a));
  why.push(`this provider has cell images for ${input.provider.length ? input.provider.join(', ') : 'no architecture'}`);
  if (allowed.size === 0) {
    throw new SelectionError(`no cell architecture can run this pod: ${why.join('; ')}`, 'NoMatchingArchitecture');
  }
  return ARCHES.filter((a) => allowed.has(a));
}
