// What a unit's log storage may be configured with, the limits it resolves them to, and the
// one error its callers see.
import { CelloError } from '@cello/proto';

export interface ContainerLogsOptions {
  /** Directory of this unit's log files (created if missing). */
  dir: string;
  /** Rotate the current file once it reaches this size. Default 10 MiB. */
  maxFileBytes?: number;
  /** Files kept per instance, the current one included. Default 5. */
  maxFiles?: number;
  /**
   * Newest output of the current instance kept in memory for readers (runs of whole lines as
   * the unit wrote them, other records as CRI records). Default 8 MiB: a follower that falls out of the
   * ring reads files and parses every record, so the ring should cover a burst of output.
   */
  ringBytes?: number;
  /** Longer lines are split into partial (P) records of this size. Default 16 KiB, like CRI. */
  maxLineBytes?: number;
}

/** The options with their defaults applied (everything but the directory). */
export type LogLimits = Required<Omit<ContainerLogsOptions, 'dir'>>;

/** A request the caller got wrong or that names something that does not exist. */
export class LogsError extends CelloError {
  constructor(code: 'NotFound' | 'InvalidArgument', message: string) {
    super(code, message);
  }
}

export function resolveLimits(opts: ContainerLogsOptions): LogLimits {
  const limits = {
    maxFileBytes: opts.maxFileBytes ?? 10 * 1024 * 1024,
    maxFiles: opts.maxFiles ?? 5,
    ringBytes: opts.ringBytes ?? 8 * 1024 * 1024,
    maxLineBytes: opts.maxLineBytes ?? 16 * 1024,
  };
  if (!(limits.maxFileBytes > 0)) throw new LogsError('InvalidArgument', 'maxFileBytes must be positive');
  if (!(limits.maxFiles >= 1)) throw new LogsError('InvalidArgument', 'maxFiles must be at least 1');
  if (!(limits.maxLineBytes > 0)) throw new LogsError('InvalidArgument', 'maxLineBytes must be positive');
  return limits;
}
