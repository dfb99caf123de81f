// ConfigureRegistries: the controller's per-registry configuration (CAs, client certificates,
// mirrors, rewrites) for a cell it did not start with it — a remote cell only has what fits in
// its user data, and no private key may go there. Validated with the same schema as
// --registry-config, kept at STATE/registries.json (0600: it may hold client keys) so a
// restarted agent pulls the same way, then applied to every later pull.
import { status as Status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { parseRegistryConfig, type RegistryConfig } from '@cello/image-puller';
import { CelloError, errMsg } from '@cello/proto';
import type { ConfigureRegistriesRequest, ConfigureRegistriesResponse } from '@cello/proto/cell';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type pino from 'pino';

export const REGISTRIES_FILE = 'registries.json';

/**
 * The configuration a controller sent before this agent restarted, if any. A file that cannot be
 * read or parsed stops the start, naming the file and what to do: pulling without it would fail
 * later, far from the cause.
 */
export function savedRegistries(stateDir: string): RegistryConfig | undefined {
  const file = join(stateDir, REGISTRIES_FILE);
  const fix = 'it holds the registry configuration a controller sent (ConfigureRegistries); remove it and restart the agent: the controller sends it again when it next connects';
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CelloError('FailedPrecondition', `${file}: cannot read it (${errMsg(err)}); ${fix}`, { cause: err });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CelloError('FailedPrecondition', `${file}: not valid JSON (${errMsg(err)}); ${fix}`, { cause: err });
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new CelloError('FailedPrecondition', `${file}: expected {"registries": {...}}; ${fix}`);
  try {
    return parseRegistryConfig((raw as { registries?: unknown }).registries ?? {}, { field: 'registries' });
  } catch (err) {
    throw new CelloError('FailedPrecondition', `${file}: ${errMsg(err)}; ${fix}`, { cause: err });
  }
}

export function configureRegistriesHandler(o: { stateDir: string; apply: (r: RegistryConfig) => void; log: pino.Logger }) {
  return (call: ServerUnaryCall<ConfigureRegistriesRequest, ConfigureRegistriesResponse>, cb: sendUnaryData<ConfigureRegistriesResponse>): void => {
    let registries: RegistryConfig;
    try {
      let raw: unknown;
      try {
        raw = JSON.parse(call.request.registriesJson || '{}');
      } catch {
        throw new Error('registriesJson: not JSON');
      }
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new Error('registriesJson: expected {"registries": {...}}');
      // Inline PEMs only: a file name would be read from the cell's own disk.
      registries = parseRegistryConfig((raw as { registries?: unknown }).registries ?? {}, { field: 'registries', noFiles: true });
    } catch (err) {
      cb({ code: Status.INVALID_ARGUMENT, details: (err as Error).message });
      return;
    }
    const file = join(o.stateDir, REGISTRIES_FILE);
    writeFileSync(`${file}.tmp`, call.request.registriesJson, { mode: 0o600 });
    renameSync(`${file}.tmp`, file);
    o.apply(registries);
    const hosts = Object.keys(registries).sort();
    o.log.info({ hosts }, 'registry configuration from the controller applied');
    cb(null, { hosts });
  };
}
