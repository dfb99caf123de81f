// The cell's user data as the agent reads it: {"cello": "cell-bootstrap/v1", ...}, written by
// the controller's aws provider (packages/controller/src/providers/aws/user-data.ts; format in
// docs/aws.md). Read from a file (images whose first boot saved it) or straight from IMDSv2.
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { ImdsClient } from '../cloud/imds.js';
import { GceMetadataClient } from '../cloud/gce-metadata.js';

export const USER_DATA_FORMAT = 'cell-bootstrap/v1';

const userDataSchema = z.object({
  cello: z.literal(USER_DATA_FORMAT),
  controllerId: z.string().min(1),
  cellId: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 of [A-Za-z0-9._-]'),
  agentPort: z.number().int().min(1).max(65535),
  caCertPem: z.string().includes('-----BEGIN CERTIFICATE-----', { message: 'must be a PEM certificate' }),
  token: z.string().min(16, 'too short to be a bootstrap token').max(256),
  tokenExpiresAt: z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be an RFC 3339 time'),
  agentConfig: z.record(z.string(), z.unknown()).optional(),
  /** The CA's trust domain: the certificate installed must name spiffe://<it>/cell/<cellId>. Default "cello". */
  trustDomain: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/, 'must be a lower-case DNS-like name')
    .optional(),
});

export type CellUserData = z.infer<typeof userDataSchema>;

export function parseUserData(text: string, origin: string): CellUserData {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new Error(`${origin}: user data is not JSON (expected {"cello": "${USER_DATA_FORMAT}", ...})`);
  }
  const r = userDataSchema.safeParse(raw);
  if (!r.success) {
    const i = r.error.issues[0]!;
    throw new Error(`${origin}: user data field ${i.path.join('.') || '(root)'}: ${i.message}`);
  }
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) {
    throw new Error(`${origin}: user data carries a private key; refusing it (keys are made on the cell)`);
  }
  return r.data;
}

export type UserDataSource = { file: string } | { imdsUrl: string } | { gceMetadataUrl: string };

/** The GCE instance metadata attribute the gce provider puts the user data in. */
export const GCE_USER_DATA_PATH = '/computeMetadata/v1/instance/attributes/user-data';

export async function readUserData(src: UserDataSource): Promise<CellUserData> {
  if ('file' in src) return parseUserData(await readFile(src.file, 'utf8'), src.file);
  if ('gceMetadataUrl' in src) {
    const text = await new GceMetadataClient(src.gceMetadataUrl).get(GCE_USER_DATA_PATH);
    if (text === undefined) throw new Error(`${src.gceMetadataUrl}: the instance has no "user-data" metadata attribute`);
    return parseUserData(text, `${src.gceMetadataUrl}${GCE_USER_DATA_PATH}`);
  }
  const imds = new ImdsClient(src.imdsUrl);
  const text = await imds.get('/latest/user-data');
  if (text === undefined) throw new Error(`${src.imdsUrl}: the instance has no user data`);
  return parseUserData(text, `${src.imdsUrl}/latest/user-data`);
}
