import { CelloError } from '../errors.js';
/** A manifest problem, naming the field by its path (e.g. `spec.containers[0].resources.limits.memory`). */
export class ManifestError extends CelloError {
  constructor(
    readonly field: string,
    readonly problem: string,
    /** Which document of a multi-document file, counting from 0. */
    readonly document?: number,
  ) {
    super('InvalidArgument', `${document !== undefined && document > 0 ? `document ${document}: ` : ''}${field ? `${field}: ` : ''}${problem}`);
  }
}

/** Renders a path like ['spec', 'containers', 0, 'image'] as spec.containers[0].image. */
export function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (typeof p === 'string' && /^[A-Za-z_][\w]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}
