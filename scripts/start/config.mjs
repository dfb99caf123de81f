// The files npm start writes: the registry's and the controller's configuration, as objects
// serialized with `yaml` (so a path with a quote or a colon cannot break them).
import { writeFileSync } from 'node:fs';

/** CNCF distribution's configuration for a throwaway registry on `addr`. */
export function writeRegistryConfig(yaml, path, { addr, dataDir }) {
  const cfg = {
    version: 0.1,
    log: { level: 'error', accesslog: { disabled: true } },
    storage: { filesystem: { rootdirectory: dataDir }, delete: { enabled: true } },
    http: { addr },
  };
  writeFileSync(path, yaml.stringify(cfg));
}

/** The controller's configuration for npm start (every option: packages/controller/README.md). */
export function writeControllerConfig(yaml, path, o) {
  const cfg = {
    controllerId: o.controllerId,
    api: {
      listen: o.api,
      // The local user's credentials (group system:masters), written at each start, as kind does.
      adminCredentials: { file: o.cellctlConfig },
      // Users of group dev (controller issue-user NAME --group dev) may read pods and their logs.
      policy: [{ groups: ['dev'], namespaces: ['default'], verbs: ['get', 'list', 'watch', 'logs'] }],
    },
    metrics: { listen: '127.0.0.1:7391' },
    store: { kind: 'embedded', dir: o.storeDir },
    provider: { kind: 'local', root: o.cellsRoot, insecureRegistries: [o.registry] },
    security: { mode: 'mtls', encryptionKeyFile: o.keyFile },
    warmPool: [{ instanceType: 'local.nano', size: o.warm }],
    pods: { retainFinishedSeconds: 600 },
  };
  writeFileSync(path, `# Written by npm start (scripts/start.mjs); see packages/controller/README.md.\n${yaml.stringify(cfg)}`);
}
