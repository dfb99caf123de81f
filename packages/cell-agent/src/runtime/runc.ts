// Thin wrappers around the runc CLI for the calls the agent makes outside a unit's shim.
import { execFile } from 'node:child_process';

export interface RuncState {
  id: string;
  pid: number;
  status: 'creating' | 'created' | 'running' | 'paused' | 'stopped';
  bundle: string;
}

export class Runc {
  constructor(
    readonly binary: string,
    readonly root: string,
  ) {}

  private run(args: string[], timeoutMs = 10_000): Promise<{ stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      execFile(this.binary, ['--root', this.root, ...args], { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
        if (err) reject(Object.assign(new Error(`runc ${args[0]}: ${String(stderr).trim() || err.message}`), { stderr }));
        else resolve({ stdout: String(stdout), stderr: String(stderr) });
      });
    });
  }

  async state(id: string): Promise<RuncState | undefined> {
    try {
      return JSON.parse((await this.run(['state', id])).stdout) as RuncState;
    } catch {
      return undefined;
    }
  }

  async kill(id: string, signal: string, all = false): Promise<void> {
    await this.run(['kill', ...(all ? ['--all'] : []), id, signal]);
  }

  async delete(id: string): Promise<void> {
    await this.run(['delete', '--force', id]).catch(() => {});
  }

  async version(): Promise<string> {
    return new Promise((resolve) => {
      execFile(this.binary, ['--version'], (err, stdout) => {
        const m = /runc version (\S+)/.exec(String(stdout));
        resolve(err || !m ? 'runc (unknown version)' : `runc ${m[1]}`);
      });
    });
  }
}
