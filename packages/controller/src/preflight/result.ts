// What one preflight check found, and the table `controller preflight` prints. A failure
// always carries the fix, in words an operator can act on (the field to change, the IAM
// action or RBAC rule to grant).

export type CheckStatus = 'ok' | 'fail' | 'warn';

export interface CheckResult {
  /** What was checked, e.g. `ec2:RunInstances (subnet-0abc)`. */
  check: string;
  status: CheckStatus;
  /** What was found (the error, the architecture, ...). */
  detail: string;
  /** How to repair a failure (or what a warning means). */
  fix?: string;
}

export const ok = (check: string, detail = ''): CheckResult => ({ check, status: 'ok', detail });
export const fail = (check: string, detail: string, fix: string): CheckResult => ({ check, status: 'fail', detail, fix });
export const warn = (check: string, detail: string, fix: string): CheckResult => ({ check, status: 'warn', detail, fix });

/** Warnings do not fail: they name something preflight could not prove either way. */
export function preflightFailed(results: readonly CheckResult[]): boolean {
  return results.some((r) => r.status === 'fail');
}

const WORDS: Record<CheckStatus, string> = { ok: 'OK', fail: 'FAIL', warn: 'WARN' };

/** CHECK, RESULT, DETAIL/FIX columns, kubectl-style (two spaces between columns). */
export function formatPreflightTable(results: readonly CheckResult[]): string {
  const rows = results.map((r) => [r.check, WORDS[r.status], r.status === 'ok' ? r.detail : [r.detail, r.fix ? `fix: ${r.fix}` : ''].filter(Boolean).join('; ')]);
  const header = ['CHECK', 'RESULT', 'DETAIL'];
  const width = [0, 1].map((i) => Math.max(header[i]!.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `${r[0]!.padEnd(width[0]!)}  ${r[1]!.padEnd(width[1]!)}  ${r[2]}`.trimEnd();
  const failed = results.filter((r) => r.status === 'fail').length;
  const summary = failed ? `${failed} of ${results.length} checks failed` : `all ${results.length} checks passed`;
  return [line(header), ...rows.map(line), '', summary].join('\n') + '\n';
}
