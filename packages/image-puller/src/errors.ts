/** What went wrong, coarse enough for a caller (and the CLI's exit code) to act on. */
export type PullErrorKind = 'not-found' | 'auth' | 'network' | 'integrity' | 'unsafe-content' | 'invalid' | 'unsupported';

export class PullError extends Error {
  readonly kind: PullErrorKind;
  constructor(kind: PullErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PullError';
    this.kind = kind;
  }
}

export function isPullError(err: unknown): err is PullError {
  return err instanceof PullError;
}

/** CLI exit codes, one per kind; 1 stays "anything else". */
export const EXIT_CODES: Record<PullErrorKind, number> = {
  'not-found': 2,
  auth: 3,
  network: 4,
  integrity: 5,
  'unsafe-content': 6,
  invalid: 7,
  unsupported: 8,
};
