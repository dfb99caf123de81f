// The agent's logger: pino JSON, with every place a secret can appear redacted centrally.
import pino from 'pino';

export const REDACT_PATHS = [
  'password',
  'token',
  'identityToken',
  '*.password',
  '*.token',
  '*.identityToken',
  '*.secrets',
  'secrets',
  'registryCredentials',
  '*.registryCredentials',
  'req.headers.authorization',
];

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): pino.Logger {
  return pino(
    { level: opts.level ?? process.env.CELLO_LOG_LEVEL ?? 'info', base: { app: 'cell-agent' }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    opts.destination ?? pino.destination(2),
  );
}
