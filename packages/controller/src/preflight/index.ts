// Preflight: what `controller preflight` prints and what the daemon checks before it starts
// (docs/operations.md). The configuration, the store, the provider's cloud account and the
// virtual node's RBAC, each check with its result and, when it fails, the fix.
import type { EC2ClientConfig } from '@aws-sdk/client-ec2';
import type { ECRClientConfig } from '@aws-sdk/client-ecr';
import { errMsg } from '@cello/proto';
import { ConfigError, loadConfig, type Config } from '../config.js';
import { encryptionKey, storeConfig } from '../daemon.js';
import { CELLS } from '../cells/schema.js';
import type { Logger } from '../obs/logger.js';
import { parseEncryptionKey } from '../security/sealed.js';
import { openStore, StoreLockedError } from '../store/index.js';
import { fail, ok, warn, type CheckResult } from './result.js';

export { formatPreflightTable, preflightFailed, type CheckResult, type CheckStatus } from './result.js';

export interface PreflightOptions {
  log: Logger;
  /** AWS SDK client settings on top of the configuration's, for EC2 and ECR (tests: moto's static credentials). */
  awsClientConfig?: Partial<EC2ClientConfig>;
  /** Deadline of the store check. */
  storeTimeoutMs?: number;
}

/** Loads the file, then checks what it configures; an invalid file is one failed check. */
export async function preflightFile(path: string, o: PreflightOptions): Promise<CheckResult[]> {
  let config: Config;
  try {
    config = loadConfig(path);
  } catch (err) {
    if (err instanceof ConfigError) return [fail('configuration', err.message, `correct the field named in ${path}`)];
    throw err;
  }
  return [ok('configuration', path), ...(await preflightConfig(config, o))];
}

export async function preflightConfig(config: Config, o: PreflightOptions): Promise<CheckResult[]> {
  const out: CheckResult[] = [];
  out.push(...encryptionKeyCheck(config));
  out.push(await storeCheck(config, o));
  if (config.provider.kind === 'aws') out.push(...(await awsChecks(config, o)));
  if (config.kubernetes?.enabled) out.push(...(await kubernetesChecks(config)));
  return out;
}

function encryptionKeyCheck(config: Config): CheckResult[] {
  const s = config.security;
  if (!s.encryptionKeyFile && !s.encryptionKeyEnv) {
    if (!config.api.insecure) return [fail('encryption key', 'none configured', "set security.encryptionKeyFile (it seals the CA's key and pod secrets)")];
    return [warn('encryption key', 'none configured: pod secrets are stored unencrypted', 'set security.encryptionKeyFile outside development')];
  }
  const field = s.encryptionKeyFile ? 'security.encryptionKeyFile' : 'security.encryptionKeyEnv';
  try {
    parseEncryptionKey(encryptionKey(config), field);
    return [ok('encryption key', `${field} readable, 32 bytes`)];
  } catch (err) {
    return [fail('encryption key', errMsg(err), `${field}: a 32-byte key, base64 or hex (e.g. openssl rand -base64 32)`)];
  }
}

async function storeCheck(config: Config, o: PreflightOptions): Promise<CheckResult> {
  const where = config.store.kind === 'embedded' ? `store (embedded, ${config.store.dir})` : `store (etcd, ${config.store.endpoints.join(', ')})`;
  const timeoutMs = o.storeTimeoutMs ?? 10_000;
  const attempt = (async () => {
    const store = await openStore(storeConfig(config, o.log));
    try {
      await store.get(`${CELLS}preflight-probe`);
    } finally {
      await store.close();
    }
  })();
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
  });
  try {
    await Promise.race([attempt, deadline]);
    return ok(where, 'reachable (read a key)');
  } catch (err) {
    // Held by a running controller: the store is there, just not ours to open.
    if (err instanceof StoreLockedError) return warn(where, errMsg(err), 'a controller is running on this store; stop it to check the store itself');
    attempt.catch(() => undefined);
    const fix =
      config.store.kind === 'embedded' ? 'store.dir must be a writable directory of this host' : 'store.endpoints must reach etcd (address, TLS files in store.tls, store.auth)';
    return fail(where, errMsg(err), fix);
  } finally {
    clearTimeout(timer);
  }
}

async function awsChecks(config: Config, o: PreflightOptions): Promise<CheckResult[]> {
  // Loaded on demand, as the daemon does: the AWS SDK takes seconds to import.
  const { parseAwsProviderConfig, AwsProvider } = await import('../providers/aws/index.js');
  const { awsPreflight } = await import('./aws.js');
  const { kind: _kind, ...section } = config.provider as Record<string, unknown>;
  let aws;
  try {
    aws = parseAwsProviderConfig(section, 'provider');
  } catch (err) {
    return [fail('provider (aws)', errMsg(err), 'correct the field named')];
  }
  const provider = new AwsProvider({
    config: aws,
    controllerId: config.controllerId,
    logger: o.log.child({ component: 'aws' }),
    ...(o.awsClientConfig ? { clientConfig: o.awsClientConfig } : {}),
  });
  let ec2Results: CheckResult[];
  try {
    const types = await provider.instanceTypes();
    ec2Results = await awsPreflight({ ec2: provider.ec2, config: aws, instanceTypes: types, controllerId: config.controllerId });
  } catch (err) {
    ec2Results = [fail('provider (aws)', errMsg(err), 'the EC2 API must answer: region, endpoint, credentials (the SDK default chain)')];
  } finally {
    await provider.close();
  }
  // ECR is its own API (and its own IAM actions): checked whether or not EC2 answered.
  const { ecrPreflight } = await import('./ecr.js');
  return [...ec2Results, ...(await ecrPreflight(aws, (o.awsClientConfig ?? {}) as Partial<ECRClientConfig>))];
}

async function kubernetesChecks(config: Config): Promise<CheckResult[]> {
  const k = config.kubernetes!;
  const out: CheckResult[] = [];
  const { readKubeletTls } = await import('../k8s/config.js');
  try {
    readKubeletTls(k);
    out.push(ok('kubelet TLS files', 'readable'));
  } catch (err) {
    out.push(fail('kubelet TLS files', errMsg(err), 'the kubelet API serves with kubernetes.kubelet.certFile/keyFile and trusts clientCAFile'));
  }
  const { KubeRest, loadKubeConfig } = await import('../k8s/client/rest.js');
  let rest;
  try {
    rest = new KubeRest(loadKubeConfig(k.kubeconfig), 'cello-preflight');
  } catch (err) {
    out.push(fail('kubeconfig', errMsg(err), 'kubernetes.kubeconfig: a kubeconfig with a current context, or run in a pod with a service account'));
    return out;
  }
  const { rbacPreflight, virtualNodePermissions } = await import('./kube-rbac.js');
  out.push(...(await rbacPreflight(rest, virtualNodePermissions(k))));
  return out;
}
