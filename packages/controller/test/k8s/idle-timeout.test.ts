// The idle timeout's flag: Go-style durations as the kubelet's streamingConnectionIdleTimeout takes
// them, and clear errors naming the flag. (The timeout itself is tested against the real shim and
// crictl: packages/cri/test/crictl-streaming.test.ts.)
import { describe, expect, it } from 'vitest';
import { DEFAULT_STREAM_IDLE_TIMEOUT_MS, parseIdleTimeout } from '../../src/k8s/kubelet/idle-timeout.js';

describe('parseIdleTimeout', () => {
  it('reads Go durations to milliseconds; 0 is never', () => {
    expect(parseIdleTimeout('--f', '4h')).toBe(DEFAULT_STREAM_IDLE_TIMEOUT_MS);
    expect(parseIdleTimeout('--f', '1h30m')).toBe(5_400_000);
    expect(parseIdleTimeout('--f', '90s')).toBe(90_000);
    expect(parseIdleTimeout('--f', '1.5s')).toBe(1500);
    expect(parseIdleTimeout('--f', '500ms')).toBe(500);
    expect(parseIdleTimeout('--f', '0')).toBe(0);
  });

  it('refuses anything else naming the flag, and what a timer cannot hold', () => {
    for (const bad of ['', '4', 'soon', '-1s', '1h 30m', '1d', '1s!']) {
      expect(() => parseIdleTimeout('--streaming-idle-timeout', bad), bad).toThrow(`--streaming-idle-timeout ${JSON.stringify(bad)}: expected a duration like 4h`);
    }
    expect(() => parseIdleTimeout('--f', '1000h')).toThrow('at most 596h');
  });
});
