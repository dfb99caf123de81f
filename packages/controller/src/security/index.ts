// Controller security: the CA (cell and client certificates), identities carried in
// certificates, and one-time bootstrap tokens for new cells.
export { CertificateAuthority, CA_STORE_KEY, type CellCertificateRequest, type CertificateAuthorityOptions, type IssuedCertificate } from './ca.js';
export {
  cellServerIdentityCheck,
  checkName,
  checkUserName,
  controllerIdentityCheck,
  DEFAULT_TRUST_DOMAIN,
  identityOf,
  identityUri,
  peerIdentity,
  type Identity,
} from './identity.js';
export { completeBootstrap, type BootstrapRequest } from './bootstrap.js';
export { RotatingCertificate, type RotationOptions } from './rotation.js';
export { ENCRYPTION_KEY_FIELD, parseEncryptionKey, UnsealError } from './sealed.js';
export { isSealedSecrets, SecretBox, type SealedSecrets } from './secret-box.js';
export { BOOTSTRAP_TOKEN_PREFIX, BootstrapTokenError, BootstrapTokens, type BootstrapTokenFailure } from './tokens.js';
