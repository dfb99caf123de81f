// `cell-agent first-boot`: runs once, before cell-agent.service, on the instance that runs the
// pod (images/install.sh installs cello-first-boot.service for it). Reads the cell's bootstrap
// (cell-bootstrap/v1: controller CA certificate, agent port, cell ID, one-time token — never a
// private key) from the instance's user data, checks it with the same parser `serve` uses, and
// writes what the agent unit needs:
//   STATE/bootstrap/user-data.json  (0600: the token is a credential, however short-lived)
//   STATE/bootstrap/ca.pem          the controller CA (public)
//   CONF/agent.env                  the agent unit's settings (listen address, cell ID, flags)
//   STATE/bootstrap/done            so later boots skip this (the token is single-use)
// The token is never logged.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { GceMetadataClient } from '../cloud/gce-metadata.js';
import { ImdsClient } from '../cloud/imds.js';
import { parseUserData } from './user-data.js';

export type Cloud = 'aws' | 'gce';

export interface FirstBootOptions {
  /** /var/lib/cello: the bootstrap files go in STATE/bootstrap. */
  stateDir: string;
  /** /etc/cello: agent.env goes here. */
  confDir: string;
  /** aws, gce, or auto (by the machine's DMI vendor). */
  metadata: string;
  awsEndpoint: string;
  gceEndpoint: string;
  /** The agent's listen host; its port comes from the user data. */
  listenHost: string;
  /** How long to keep retrying a metadata service that does not answer (it may come up after us at boot). */
  timeoutSeconds: number;
  logger: Logger;
  /** Where the DMI fields are read (tests). */
  dmiDir?: string;
}

export type FirstBootResult = { outcome: 'already-bootstrapped' } | { outcome: 'written'; cloud: Cloud; cellId: string; instanceId?: string };

// Each request has its own deadline; the retry loop below bounds the whole wait.
const REQUEST_TIMEOUT_MS = 5000;

export async function firstBoot(o: FirstBootOptions): Promise<FirstBootResult> {
  const log = o.logger;
  const bootstrapDir = join(o.stateDir, 'bootstrap');
  if (existsSync(join(bootstrapDir, 'done'))) {
    log.info('already bootstrapped; nothing to do');
    return { outcome: 'already-bootstrapped' };
  }
  const cloud = whichCloud(o);
  const reader = cloud === 'aws' ? awsReader(o.awsEndpoint) : gceReader(o.gceEndpoint);
  const deadline = Date.now() + o.timeoutSeconds * 1000;
  let got: MetadataRead;
  for (let attempt = 1; ; attempt++) {
    try {
      got = await reader();
      break;
    } catch (err) {
      const message = (err as Error).message;
      if (Date.now() > deadline) throw new Error(`metadata service (${cloud}) did not answer in time: ${message}`);
      if (attempt === 1 || attempt % 10 === 0) log.warn({ cloud, error: message }, 'metadata service not ready; retrying');
      await new Promise((r) => setTimeout(r, Math.min(2000, 200 * attempt)));
    }
  }
  if ('fatal' in got) throw new Error(got.fatal);
  const ud = parseUserData(got.userData, got.origin);
  const args = agentConfigArgs(ud.agentConfig ?? {}, log, cloud === 'aws' ? o.awsEndpoint : undefined);
  // The agent reads its bootstrap from the file written here, and watches the same metadata
  // service for the notices that announce the instance's end (spot interruption, preemption).
  args.push('--instance-notices', `${cloud}:${cloud === 'aws' ? o.awsEndpoint : o.gceEndpoint}`);
  if (Date.parse(ud.tokenExpiresAt) < Date.now())
    log.warn({ tokenExpiresAt: ud.tokenExpiresAt }, 'the bootstrap token has already expired; the controller will refuse it and replace this cell');

  writeAtomic(join(bootstrapDir, 'user-data.json'), got.userData, 0o600);
  writeAtomic(join(bootstrapDir, 'ca.pem'), ud.caCertPem, 0o644);
  const lines = [
    "# Written by cello-first-boot from this instance's user data; read by cell-agent.service.",
    `CELLO_AGENT_LISTEN=${o.listenHost || '0.0.0.0'}:${ud.agentPort}`,
    `CELLO_CELL_ID=${ud.cellId}`,
    `CELLO_CONTROLLER_ID=${JSON.stringify(ud.controllerId)}`,
    ...(got.instanceId ? [`CELLO_INSTANCE_ID=${got.instanceId}`] : []),
    `CELLO_AGENT_ARGS=${args.join(' ')}`,
  ];
  writeAtomic(join(o.confDir, 'agent.env'), `${lines.join('\n')}\n`, 0o644);
  writeAtomic(join(bootstrapDir, 'done'), `${new Date().toISOString()}\n`, 0o644);
  log.info({ cloud, cellId: ud.cellId, controllerId: ud.controllerId, agentPort: ud.agentPort, instanceId: got.instanceId }, 'cell bootstrap written');
  return { outcome: 'written', cloud, cellId: ud.cellId, ...(got.instanceId ? { instanceId: got.instanceId } : {}) };
}

/** aws or gce as configured; with auto, from the DMI vendor — and a refusal rather than a guess. */
export function whichCloud(o: Pick<FirstBootOptions, 'metadata' | 'confDir' | 'dmiDir'>): Cloud {
  const want = o.metadata || 'auto';
  if (want === 'aws' || want === 'gce') return want;
  if (want !== 'auto') throw new Error(`CELLO_METADATA: expected aws, gce or auto, got "${want}"`);
  const dmi = (field: string) => {
    try {
      return readFileSync(join(o.dmiDir ?? '/sys/class/dmi/id', field), 'utf8').trim();
    } catch {
      return '';
    }
  };
  const vendor = `${dmi('sys_vendor')} ${dmi('bios_vendor')} ${dmi('product_name')}`;
  if (/amazon/i.test(vendor)) return 'aws';
  if (/google/i.test(vendor)) return 'gce';
  throw new Error(`CELLO_METADATA=auto: cannot tell the cloud from DMI ("${vendor.trim()}"); set CELLO_METADATA=aws or gce in ${o.confDir}/first-boot.env`);
}

// One attempt: throws when the service should be asked again; `fatal` when asking again cannot help.
type MetadataRead = { userData: string; origin: string; instanceId?: string } | { fatal: string };

function awsReader(endpoint: string): () => Promise<MetadataRead> {
  const imds = new ImdsClient(endpoint, REQUEST_TIMEOUT_MS);
  return async () => {
    const userData = await imds.get('/latest/user-data');
    if (userData === undefined) return { fatal: 'this instance has no user data (launch it through the Cello controller)' };
    const instanceId = await optional(imds.get('/latest/meta-data/instance-id'));
    return { userData, origin: `${endpoint}/latest/user-data`, ...(instanceId ? { instanceId } : {}) };
  };
}

function gceReader(endpoint: string): () => Promise<MetadataRead> {
  const gce = new GceMetadataClient(endpoint, REQUEST_TIMEOUT_MS);
  return async () => {
    const userData = await gce.get('/computeMetadata/v1/instance/attributes/user-data');
    if (userData === undefined) return { fatal: 'this instance has no "user-data" metadata attribute (launch it through the Cello controller)' };
    const instanceId = await optional(gce.get('/computeMetadata/v1/instance/id'));
    return { userData, origin: `${endpoint}/computeMetadata/v1/instance/attributes/user-data`, ...(instanceId ? { instanceId } : {}) };
  };
}

// The instance ID only labels the cell in agent.env: without it the bootstrap still works.
async function optional(p: Promise<string | undefined>): Promise<string | undefined> {
  return (await p.catch(() => undefined))?.trim() || undefined;
}

// The user data's agentConfig, as flags of `cell-agent serve`. Only these keys are known;
// values are checked strictly because they end up on the agent's command line (unquoted in
// the unit's ExecStart).
const HOST_PORT = /^[A-Za-z0-9.-]+:[0-9]{1,5}$/;
export function agentConfigArgs(cfg: unknown, log?: Logger, imdsUrl?: string): string[] {
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) throw new Error('user data: agentConfig: expected an object');
  const args: string[] = [];
  for (const [k, v] of Object.entries(cfg)) {
    if (k === 'insecureRegistries') {
      if (!Array.isArray(v) || !v.every((r) => typeof r === 'string' && HOST_PORT.test(r)))
        throw new Error('user data: agentConfig.insecureRegistries: expected a list of host:port');
      for (const r of v as string[]) args.push('--insecure-registry', r);
    } else if (k === 'metricsListen') {
      if (typeof v !== 'string' || !HOST_PORT.test(v)) throw new Error('user data: agentConfig.metricsListen: expected host:port');
      args.push('--metrics-listen', v);
    } else if (k === 'pidsLimit') {
      if (!Number.isInteger(v) || (v as number) < 1) throw new Error('user data: agentConfig.pidsLimit: expected a positive integer');
      args.push('--pids-limit', String(v));
    } else if (k === 'auditTranscripts') {
      if (typeof v !== 'boolean') throw new Error('user data: agentConfig.auditTranscripts: expected true or false');
      if (v) args.push('--audit-transcripts');
    } else if (k === 'ecrCredentials') {
      if (v !== 'instance-profile' && v !== 'none') throw new Error('user data: agentConfig.ecrCredentials: expected "instance-profile" or "none"');
      if (v === 'instance-profile') {
        if (!imdsUrl) throw new Error('user data: agentConfig.ecrCredentials: "instance-profile" needs EC2 instance metadata (this cell is not on AWS)');
        args.push('--ecr-instance-profile', imdsUrl);
      }
    } else {
      log?.warn({ key: k }, 'ignoring an agentConfig setting this image does not know');
    }
  }
  return args;
}

function writeAtomic(path: string, data: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(`${path}.tmp`, data, { mode });
  renameSync(`${path}.tmp`, path);
}
