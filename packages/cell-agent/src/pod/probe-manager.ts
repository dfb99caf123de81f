// A unit's probe manager, as the kubelet's prober manager: which probes run for an instance and
// in what order (startup first; liveness and readiness once it has passed), and stopping them
// all. What a result means for the unit (restart, readiness, events) stays with the unit.
import type { Container, Probe } from '@cello/proto/cell';
import { Prober, type ProbeKind, type ProbeTarget } from './probes.js';

export interface ProbeHooks {
  /** A startup probe result; on success liveness and readiness start right after. */
  startup(ok: boolean, message: string): void;
  liveness(ok: boolean, message: string): void;
  readiness(ok: boolean, message: string): void;
  /** The container declares no readiness probe (called where that probe would start). */
  noReadinessProbe(): void;
  /** Every single result, for metrics. */
  each(kind: ProbeKind, ok: boolean): void;
}

export class ProbeManager {
  private probers: Prober[] = [];

  constructor(
    private readonly spec: Container,
    /** Milliseconds per probe "second". */
    private readonly secondMs: number,
  ) {}

  /** Starts the instance's probes. */
  start(target: ProbeTarget, hooks: ProbeHooks): void {
    const s = this.spec;
    const startRest = () => {
      if (s.livenessProbe) this.run('liveness', s.livenessProbe, target, hooks.liveness, hooks);
      if (s.readinessProbe) this.run('readiness', s.readinessProbe, target, hooks.readiness, hooks);
      else hooks.noReadinessProbe();
    };
    if (s.startupProbe) {
      this.run(
        'startup',
        s.startupProbe,
        target,
        (ok, msg) => {
          hooks.startup(ok, msg);
          if (ok) startRest();
        },
        hooks,
      );
    } else startRest();
  }

  stop(): void {
    for (const p of this.probers.splice(0)) p.stop();
  }

  private run(kind: ProbeKind, probe: Probe, target: ProbeTarget, onChange: (ok: boolean, message: string) => void, hooks: ProbeHooks): void {
    const p = new Prober(kind, probe, target, onChange, this.secondMs);
    this.probers.push(p);
    p.onEach = (ok) => hooks.each(kind, ok);
    p.start();
  }
}
