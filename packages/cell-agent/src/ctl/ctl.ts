// `cell-agent ctl`: a crictl-like client for one cell. Takes Kubernetes v1 Pod manifests.
import { readFileSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { ManifestError, podFromManifest } from '@cello/proto';
import { ApplyPodRequest, type CellAgentClient, type ContainerStatus, type GetStatusResponse, Pod, PodPhase } from '@cello/proto/cell';
import { connectAgent, type ClientTls } from './client.js';

function phaseName(p: PodPhase): string {
  return PodPhase[p]?.replace('POD_PHASE_', '') ?? String(p);
}

function stateText(s: ContainerStatus): string {
  const st = s.state?.state;
  if (!st) return 'Unknown';
  if (st.$case === 'waiting') return `Waiting(${st.value.reason}${st.value.message ? `: ${st.value.message}` : ''})`;
  if (st.$case === 'running') return `Running since ${st.value.startedAt?.toISOString()}`;
  return `Terminated(${st.value.reason}, exit ${st.value.exitCode}${st.value.message ? `: ${st.value.message}` : ''})`;
}

export function registerCtl(program: Command, registerExtra?: (ctl: Command, connect: () => CellAgentClient) => void): Command {
  const ctl = program
    .command('ctl')
    .description('talk to a cell agent, like crictl on a node: apply a Pod manifest, watch its status, delete it')
    .requiredOption('--addr <host:port>', 'agent address')
    .option(
      '--tls-cert <file>',
      "client certificate (PEM) from the agent's CA naming a client the agent serves: spiffe://<td>/client/controller, or a name given to `serve --allow-client`",
    )
    .option('--tls-key <file>', 'client private key (PEM)')
    .option('--tls-ca <file>', "CA certificate (PEM) that signed the agent's certificate")
    .option('--server-name <name>', "name to expect in the agent's certificate (default: the address host)")
    .option('--insecure-dev', 'connect without TLS (only to an agent started with --insecure-dev)')
    .addHelpText(
      'after',
      '\nExamples:\n  cell-agent ctl --addr 127.0.0.1:7443 --insecure-dev apply -f pod.yaml\n  cell-agent ctl --addr 10.0.0.5:7443 --tls-cert c.pem --tls-key c.key --tls-ca ca.pem status -o json\n',
    );
  const connect = (): CellAgentClient => {
    const o = ctl.opts<{ addr: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; insecureDev?: boolean; serverName?: string }>();
    let tls: ClientTls | undefined;
    if (o.tlsCert || o.tlsKey || o.tlsCa) {
      if (!o.tlsCert || !o.tlsKey || !o.tlsCa) throw new Error('--tls-cert, --tls-key and --tls-ca go together');
      tls = { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa };
    } else if (!o.insecureDev) throw new Error('give --tls-cert/--tls-key/--tls-ca, or --insecure-dev for a development agent');
    return connectAgent(o.addr, tls, o.serverName ? { serverName: o.serverName } : {});
  };
  ctl
    .command('apply')
    .description('apply a Kubernetes v1 Pod manifest (YAML or JSON; Secrets and ConfigMaps in the same file are sent along)')
    .requiredOption('-f, --file <file>', 'manifest file, - for stdin')
    .option('--generation <n>', 'generation to send (default: now in milliseconds)', (v) => Number(v))
    .action(async (opts: { file: string; generation?: number }) => {
      const text = readFileSync(opts.file === '-' ? 0 : opts.file, 'utf8');
      let m;
      try {
        m = podFromManifest(text);
      } catch (err) {
        if (err instanceof ManifestError) throw new Error(`${opts.file}: ${err.message}`);
        throw err;
      }
      const c = connect();
      const res = await new Promise<{ generation: number; changedUnits: string[] }>((resolve, reject) =>
        c.applyPod(
          ApplyPodRequest.fromPartial({ pod: Pod.fromPartial(m.pod), generation: opts.generation ?? Date.now(), secrets: m.secrets, configMaps: m.configMaps }),
          (err, r) => (err ? reject(err) : resolve(r)),
        ),
      );
      console.log(`pod/${m.pod.metadata?.name} applied (generation ${res.generation}; changed: ${res.changedUnits.join(', ') || 'none'})`);
      c.close();
    });
  ctl
    .command('status')
    .description("show the pod's phase, conditions and units")
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .action(async (opts: { output: string }) => {
      const c = connect();
      const r = await new Promise<GetStatusResponse>((resolve, reject) => c.getStatus({}, (err, x) => (err ? reject(err) : resolve(x))));
      c.close();
      if (opts.output === 'json') {
        const { GetStatusResponse } = await import('@cello/proto/cell');
        console.log(JSON.stringify(GetStatusResponse.toJSON(r), null, 2));
        return;
      }
      if (!r.status) {
        console.log('no pod');
        return;
      }
      const s = r.status;
      console.log(`phase: ${phaseName(s.phase)}   pod IP: ${s.podIp}   generation: ${r.generation}`);
      for (const cd of s.conditions) console.log(`  ${cd.type}: ${cd.status === 1 ? 'True' : 'False'}${cd.reason ? ` (${cd.reason})` : ''}`);
      for (const u of [...s.initContainerStatuses.map((x) => ({ ...x, name: `init:${x.name}` })), ...s.containerStatuses]) {
        console.log(`  ${u.name}: ${stateText(u)} ready=${u.ready} restarts=${u.restartCount}`);
      }
    });
  ctl
    .command('delete')
    .description('stop every unit (SIGTERM, grace period, SIGKILL) and forget the pod')
    .option('--grace <seconds>', "grace period (default: the pod's terminationGracePeriodSeconds)", (v) => Number(v))
    .action(async (opts: { grace?: number }) => {
      const c = connect();
      await new Promise<void>((resolve, reject) => c.deletePod(opts.grace !== undefined ? { gracePeriodSeconds: opts.grace } : {}, (err) => (err ? reject(err) : resolve())));
      c.close();
      console.log('pod deleted');
    });
  registerExtra?.(ctl, connect);
  return ctl;
}
