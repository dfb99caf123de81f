// JSON logs with secrets redacted centrally: whatever path a secret takes into a log line
// (a config dump, a request, an error with a pod attached), these keys never print. The list is
// @cello/proto's, shared with the agent and the AWS provider's fallback logger.
import { pino, type Logger } from 'pino';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';

export type { Logger };

export function createLogger(opts: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'controller',
      level: opts.level ?? 'info',
      redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    (opts.destination as pino.DestinationStream | undefined) ?? pino.destination(2),
  );
}

/** A logger that drops everything (library use and benchmarks). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
