// Keeps a certificate fresh: holds the current one and re-issues it once rotation is due (two
// thirds of its lifetime), checked on a timer. Consumers read `current()` whenever they build a
// new connection, so a renewal takes effect without a restart.
import type { CertificateAuthority } from './ca.js';

export interface RotationOptions<T> {
  /** How often to check, in ms. Default 60,000. */
  checkEveryMs?: number;
  onRenew?(value: T): void;
  /** A failed renewal is retried at the next check; the current certificate stays in use. */
  onError?(err: Error): void;
}

export class RotatingCertificate<T extends { certPem: string }> {
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<boolean> | undefined;

  private constructor(
    private readonly ca: CertificateAuthority,
    private readonly issue: () => Promise<T>,
    private value: T,
    private readonly opts: RotationOptions<T>,
  ) {}

  static async start<T extends { certPem: string }>(ca: CertificateAuthority, issue: () => Promise<T>, opts: RotationOptions<T> = {}): Promise<RotatingCertificate<T>> {
    const r = new RotatingCertificate(ca, issue, await issue(), opts);
    r.timer = setInterval(() => void r.check().catch(() => undefined), opts.checkEveryMs ?? 60_000);
    r.timer.unref();
    return r;
  }

  current(): T {
    return this.value;
  }

  /** Renews now if due; true when a new certificate was issued. Concurrent calls share one renewal. */
  check(now: Date = new Date()): Promise<boolean> {
    this.checking ??= (async () => {
      try {
        const { renewed, value } = await this.ca.renewIfDue(this.value, this.issue, now);
        if (renewed) {
          this.value = value;
          this.opts.onRenew?.(value);
        }
        return renewed;
      } catch (err) {
        this.opts.onError?.(err instanceof Error ? err : new Error(String(err)));
        return false;
      } finally {
        this.checking = undefined;
      }
    })();
    return this.checking;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
