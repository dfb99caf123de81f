// Process warnings become JSON log lines (logProcessWarnings, installed by bin/controller.ts):
// a child process with the controller's logger emits a warning of its own and makes a real AWS
// SDK client, which warns under Node < 22 (NodeVersionSupportWarning). Every stderr line must be
// JSON; without the hook the same child prints Node's raw multi-line warning text.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const PKG = fileURLToPath(new URL('../..', import.meta.url));
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

function child(hook: boolean): Promise<string> {
  const script = `
    import { createLogger } from './dist/obs/logger.js';
    import { logProcessWarnings } from '@cello/proto';
    import { EC2Client } from '@aws-sdk/client-ec2';
    const log = createLogger();
    ${hook ? 'logProcessWarnings(log);' : ''}
    process.emitWarning('a test warning', { code: 'CELLO_TEST' });
    new EC2Client({ region: 'us-east-1' });
    setTimeout(() => {}, 300);
  `;
  const env = { ...process.env };
  delete env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED;
  delete env.NODE_OPTIONS;
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ['--input-type=module', '-e', script], { cwd: PKG, env, timeout: 30_000 }, (err, _out, stderr) => (err ? reject(err) : resolve(stderr))),
  );
}

describe('logProcessWarnings', () => {
  it('logs each process warning as one JSON line, and nothing raw reaches stderr', async () => {
    const lines = (await child(true)).split('\n').filter(Boolean);
    const parsed = lines.map((l) => {
      try {
        return JSON.parse(l) as { level: number; msg: string; warning: { name: string; code?: string; message: string } };
      } catch {
        throw new Error(`not a JSON log line on stderr: ${l}`);
      }
    });
    const warnings = parsed.filter((p) => p.msg === 'process warning');
    expect(warnings.find((w) => w.warning.code === 'CELLO_TEST')).toMatchObject({ level: 40, warning: { name: 'Warning', message: 'a test warning' } });
    if (NODE_MAJOR < 22) expect(warnings.some((w) => w.warning.message.startsWith('NodeVersionSupportWarning:'))).toBe(true);
  }, 60_000);

  it("is what stops the raw print: without it the same child writes Node's text warnings", async () => {
    const stderr = await child(false);
    expect(stderr).toMatch(/^\(node:\d+\) \[CELLO_TEST\] Warning: a test warning$/m);
    if (NODE_MAJOR < 22) expect(stderr).toMatch(/NodeVersionSupportWarning: The AWS SDK for JavaScript \(v3\)/);
  }, 60_000);
});
