import { describe, expect, it } from 'vitest';
import { exitCodeOfSignal, signalName, signalNumberOfExitCode, signalOfExitCode } from '../src/runtime/exit-signal.js';

describe('exit codes and signals (128+N)', () => {
  it('reads the signal of a 128+N exit code, and nothing of other codes', () => {
    expect(signalNumberOfExitCode(137)).toBe(9);
    expect(signalOfExitCode(137)).toBe('SIGKILL');
    expect(signalOfExitCode(143)).toBe('SIGTERM');
    for (const code of [0, 1, 127, 128, 160, 255]) {
      expect(signalNumberOfExitCode(code)).toBe(0);
      expect(signalOfExitCode(code)).toBe('');
    }
  });

  it('converts both ways', () => {
    expect(exitCodeOfSignal('SIGKILL')).toBe(137);
    expect(signalOfExitCode(exitCodeOfSignal('SIGUSR1'))).toBe('SIGUSR1');
    expect(signalName(15)).toBe('SIGTERM');
    expect(signalName(0)).toBe('');
  });
});
