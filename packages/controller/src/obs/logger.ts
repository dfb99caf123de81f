// JSON logs with secrets redacted centrally: whatever path a secret takes into a log line
// (a config dump, a request, an error with a pod attached), these keys never print.
import { pino, type Logger } from 'pino';

export type { Logger };

export const REDACT_PATHS = [
  'password', '*.password', '*.*.password',
  'token', '*.token', '*.*.token',
  'keyPem', '*.keyPem', '*.*.keyPem',
  'privateKey', '*.privateKey',
  'encryptionKey', '*.encryptionKey', '*.*.encryptionKey',
  'secrets', '*.secrets', '*.*.secrets',
  'registryCredentials', '*.registryCredentials',
  'identityToken', '*.identityToken',
  'authorization', '*.authorization', '*.headers.authorization',
];

export function createLogger(opts: { level?: string; name?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      name: opts.name ?? 'controller',
      level: opts.level ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    (opts.destination as pino.DestinationStream | undefined) ?? pino.destination(2),
  );
}

/** A logger that drops everything (library use and benchmarks). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
