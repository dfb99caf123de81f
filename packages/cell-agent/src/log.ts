// The agent's logger: pino JSON, with every place a secret can appear redacted centrally.
import pino from 'pino';
import { REDACT_CENSOR, REDACT_PATHS } from '@cello/proto';

// The list is @cello/proto's, shared with the controller.
export { REDACT_CENSOR, REDACT_PATHS };

export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): pino.Logger {
  return pino(
    { level: opts.level ?? process.env.CELLO_LOG_LEVEL ?? 'info', base: { app: 'cell-agent' }, redact: { paths: [...REDACT_PATHS], censor: REDACT_CENSOR } },
    opts.destination ?? pino.destination(2),
  );
}
