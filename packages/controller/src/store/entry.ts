// The checks every store backend makes of what it is asked to keep, so that both refuse alike.
import { InvalidEntryError } from './store.js';

/** The stored form of a value: its JSON. */
export function toJson(key: string, value: unknown): string {
  const json = JSON.stringify(value);
  if (json === undefined) throw new InvalidEntryError(`value for key "${key}" is not JSON-serialisable`);
  return json;
}

export function checkKey(key: unknown, what = 'key'): asserts key is string {
  if (typeof key !== 'string' || key.length === 0) throw new InvalidEntryError(`${what} must be a non-empty string`);
}
