// A process that died of signal N is reported by runc (and shells) as exit code 128+N; the wait
// status itself is not visible to us. The conversions both ways, and signal names, live here.
import { constants as osConstants } from 'node:os';

const SIGNAL_NAMES = new Map<number, string>(Object.entries(osConstants.signals).map(([name, num]) => [num, name]));

/** The signal number a 128+N exit code stands for, or 0. */
export function signalNumberOfExitCode(code: number): number {
  return code > 128 && code < 128 + 32 ? code - 128 : 0;
}

/** The name of signal `n` ("SIGKILL"), or '' for 0 or an unknown number. */
export function signalName(n: number): string {
  return SIGNAL_NAMES.get(n) ?? '';
}

/** The signal name a 128+N exit code stands for, or ''. */
export function signalOfExitCode(code: number): string {
  return signalName(signalNumberOfExitCode(code));
}

/** The 128+N exit code of a death by the named signal. */
export function exitCodeOfSignal(name: string): number {
  return 128 + (osConstants.signals[name as NodeJS.Signals] ?? 0);
}
