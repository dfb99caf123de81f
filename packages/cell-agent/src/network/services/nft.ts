// Running `nft -f -` in a network namespace: the transaction on stdin, so it is one atomic
// kernel transaction however large, and never on a command line.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { CelloError } from '@cello/proto';

/** nft refused a ruleset or could not run: the cell cannot program its Services. */
export class NftError extends CelloError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FailedPrecondition', message, options);
  }
}

export interface NftOptions {
  /** The namespace to program (e.g. /run/netns/X); undefined: the agent's own. */
  netnsPath?: string;
  nftPath?: string;
  timeoutMs?: number;
}

/**
 * In the namespace, `sh` turns on IPv4 forwarding, then becomes nft (`exec "$@"`). Forwarding:
 * traffic to a node port or an external IP arrives for the cell's address and leaves, DNATed,
 * for an endpoint on another cell.
 */
const FORWARD_THEN = 'echo 1 > /proc/sys/net/ipv4/ip_forward && exec "$@"';

/**
 * Runs nft with `input` on stdin. With `forwarding`, IPv4 forwarding is turned on first in the
 * same namespace (see enableForwarding), by the same process: forking from the agent's large
 * Node process is the costly part of running a command, so a first sync pays for one, not two.
 */
export async function runNft(input: string, o: NftOptions & { forwarding?: boolean } = {}, args: string[] = ['-f', '-']): Promise<string> {
  const nft = o.nftPath ?? 'nft';
  let cmd = nft;
  let argv = args;
  if (o.netnsPath) {
    cmd = 'nsenter';
    argv = o.forwarding ? [`--net=${o.netnsPath}`, '--', 'sh', '-c', FORWARD_THEN, 'sh', nft, ...args] : [`--net=${o.netnsPath}`, '--', nft, ...args];
  } else if (o.forwarding) {
    // The agent's own namespace: a file write, no process at all.
    await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n').catch((e: Error) => {
      throw new NftError(`cannot enable IPv4 forwarding: ${e.message}`);
    });
  }
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 30_000);
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new NftError(e.code === 'ENOENT' ? `${cmd} is not installed: run \`apt-get install -y nftables\`` : `cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(Buffer.concat(out).toString('utf8'));
      let why = Buffer.concat(err).toString('utf8').trim() || (signal ? `killed by ${signal}` : `exit code ${code}`);
      if (code === 127) why += ` (is nft installed? \`apt-get install -y nftables\`)`;
      reject(new NftError(`${o.forwarding && o.netnsPath ? 'enabling IPv4 forwarding and ' : ''}nft ${args.join(' ')}${o.netnsPath ? ` in ${o.netnsPath}` : ''} failed: ${why}`));
    });
    child.stdin.on('error', () => {}); // reported through close
    child.stdin.end(input);
  });
}
