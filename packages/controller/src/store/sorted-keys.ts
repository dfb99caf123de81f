// The embedded store's key index: sorted keys for prefix listing. A flat sorted array costs a
// memmove of the whole index per new key (the store holds every pod, cell and event: tens of
// thousands of keys at scale); chunks of at most CHUNK keys make an insert or delete touch one
// small array, and finding a key's chunk is a binary search over the chunks' last keys.
const CHUNK = 512;

export class SortedKeys {
  private chunks: string[][] = [];
  private n = 0;

  get size(): number {
    return this.n;
  }

  /** Replaces the contents with `keys` (any order, no duplicates). */
  reset(keys: string[]): void {
    const sorted = [...keys].sort();
    this.chunks = [];
    for (let i = 0; i < sorted.length; i += CHUNK) this.chunks.push(sorted.slice(i, i + CHUNK));
    this.n = sorted.length;
  }

  /** Index of the first chunk whose last key is >= k (or the last chunk). */
  private chunkFor(k: string): number {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const c = this.chunks[mid]!;
      if (c[c.length - 1]! < k) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  insert(k: string): void {
    if (this.chunks.length === 0) {
      this.chunks.push([k]);
      this.n = 1;
      return;
    }
    const ci = this.chunkFor(k);
    const c = this.chunks[ci]!;
    const i = lowerBound(c, k);
    if (c[i] === k) return;
    c.splice(i, 0, k);
    this.n++;
    if (c.length > 2 * CHUNK) this.chunks.splice(ci, 1, c.slice(0, CHUNK), c.slice(CHUNK));
  }

  delete(k: string): boolean {
    if (this.chunks.length === 0) return false;
    const ci = this.chunkFor(k);
    const c = this.chunks[ci]!;
    const i = lowerBound(c, k);
    if (c[i] !== k) return false;
    c.splice(i, 1);
    this.n--;
    if (c.length === 0) this.chunks.splice(ci, 1);
    return true;
  }

  /** Keys >= `from`, in order. */
  *from(from: string): IterableIterator<string> {
    if (this.chunks.length === 0) return;
    let ci = this.chunkFor(from);
    let i = lowerBound(this.chunks[ci]!, from);
    for (; ci < this.chunks.length; ci++, i = 0) {
      const c = this.chunks[ci]!;
      for (; i < c.length; i++) yield c[i]!;
    }
  }

  [Symbol.iterator](): IterableIterator<string> {
    return this.from('');
  }
}

/** First index in sorted `keys` whose key is >= k. */
function lowerBound(keys: string[], k: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (keys[mid]! < k) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
