// The fields that carry secrets, wherever they sit in a logged object (a config dump, a request,
// an error with a pod or these messages attached): the controller's and the agent's loggers
// both redact them. They are the contracts' own field names (registryCredentials,
// identityToken, keyPem...), so the one list lives with the contracts.
const SECRET_FIELDS = [
  'password',
  'token',
  'identityToken',
  'authorization',
  'keyPem',
  'privateKey',
  'encryptionKey',
  'secrets',
  'registryCredentials',
  // ConfigureRegistriesRequest: a registries block as JSON text, client keys included.
  'registriesJson',
  // The cell's user data carries its bootstrap token.
  'userData',
];

/** pino `redact.paths`: each secret field at the top level and up to two objects down. */
export const REDACT_PATHS: readonly string[] = [
  ...SECRET_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`]),
  // A registries block (@cello/image-puller's RegistryConfig) holds client keys deeper down:
  // registries[host].client.keyPem, on its own or inside a configuration.
  'registries.*.client.keyPem',
  '*.registries.*.client.keyPem',
];

/** What a redacted value prints as. */
export const REDACT_CENSOR = '[redacted]';
