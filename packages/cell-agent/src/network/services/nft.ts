// Running `nft -f -` in a network namespace: the transaction on stdin, so it is one atomic
// kernel transaction however large, and never on a command line.
import { spawn } from 'node:child_process';
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

export function runNft(input: string, o: NftOptions = {}, args: string[] = ['-f', '-']): Promise<string> {
  const nft = o.nftPath ?? 'nft';
  const [cmd, argv] = o.netnsPath ? ['nsenter', [`--net=${o.netnsPath}`, '--', nft, ...args]] : [nft, args];
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
      const why = Buffer.concat(err).toString('utf8').trim() || (signal ? `killed by ${signal}` : `exit code ${code}`);
      reject(new NftError(`nft ${args.join(' ')}${o.netnsPath ? ` in ${o.netnsPath}` : ''} failed: ${why}`));
    });
    child.stdin.on('error', () => {}); // reported through close
    child.stdin.end(input);
  });
}

/**
 * Turns on IPv4 forwarding in the namespace: traffic to a node port or an external IP arrives
 * for the cell's address and leaves, DNATed, for an endpoint on another cell.
 */
export function enableForwarding(o: NftOptions = {}): Promise<void> {
  const write = ['sh', '-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward'];
  const [cmd, argv] = o.netnsPath ? ['nsenter', [`--net=${o.netnsPath}`, '--', ...write]] : [write[0]!, write.slice(1)];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => reject(new NftError(`cannot enable IPv4 forwarding: ${e.message}`)));
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new NftError(`cannot enable IPv4 forwarding${o.netnsPath ? ` in ${o.netnsPath}` : ''}: ${err.trim() || `exit code ${code}`}`)),
    );
  });
}
