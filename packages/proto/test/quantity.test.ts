import { describe, expect, it } from 'vitest';
import { formatBytes, formatCpuMillis, parseBytes, parseCount, parseCpuMillis, parseQuantity, QuantityError } from '../src/quantity.js';

describe('quantities', () => {
  it.each([
    ['100m', 100],
    ['0.5', 500],
    ['1', 1000],
    ['2.25', 2250],
    ['1e-1', 100],
    ['0.0001', 1], // rounds up, as Kubernetes does
  ])('cpu %s = %d millicores', (q, m) => expect(parseCpuMillis(q)).toBe(m));

  it('accepts numbers as given in JSON', () => {
    expect(parseCpuMillis(2)).toBe(2000);
    expect(parseBytes(1024)).toBe(1024);
  });

  it.each([
    ['64Mi', 64 * 2 ** 20],
    ['1Gi', 2 ** 30],
    ['1G', 1e9],
    ['128974848', 128974848],
    ['129e6', 129e6],
    ['123M', 123e6],
    ['1.5Ki', 1536],
    ['500m', 1],
  ])('memory %s = %d bytes', (q, b) => expect(parseBytes(q)).toBe(b));

  it.each(['', 'abc', '1.2.3', '10 Mi', '1MiB', 'Mi', '-'])('refuses %j', (q) => {
    expect(() => parseQuantity(q)).toThrow(QuantityError);
  });

  it('refuses negative and fractional counts', () => {
    expect(() => parseCpuMillis('-1')).toThrow(QuantityError);
    expect(() => parseCount('1.5')).toThrow(QuantityError);
    expect(parseCount('4')).toBe(4);
  });

  it('formats like kubectl', () => {
    expect(formatCpuMillis(250)).toBe('250m');
    expect(formatCpuMillis(2000)).toBe('2');
    expect(formatBytes(64 * 2 ** 20)).toBe('64Mi');
    expect(formatBytes(1000)).toBe('1000');
  });
});
