// Process warnings as log lines. Node prints each warning (process.emitWarning) raw on stderr,
// several lines of text in the middle of the JSON log: the AWS SDK's NodeVersionSupportWarning
// (@aws-sdk/core's emitWarningIfUnsupportedVersion, on the first client made under Node < 22)
// broke every log reader that way. Node's own printer is a 'warning' listener: it is removed
// (what --no-warnings does) and each warning is logged as one structured line instead.

/** The one method used of a pino logger. */
export interface WarningLog {
  warn(obj: object, msg: string): void;
}

/** Logs each process warning on `log` instead of printing it; returns what undoes it. */
export function logProcessWarnings(log: WarningLog, proc: NodeJS.Process = process): () => void {
  const previous = proc.listeners('warning');
  proc.removeAllListeners('warning');
  const onWarning = (w: Error & { code?: string }) => log.warn({ warning: { name: w.name, ...(w.code ? { code: w.code } : {}), message: w.message } }, 'process warning');
  proc.on('warning', onWarning);
  return () => {
    proc.off('warning', onWarning);
    for (const l of previous) proc.on('warning', l as (w: Error) => void);
  };
}
