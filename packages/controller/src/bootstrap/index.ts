// Cell bootstrap, controller side (see bootstrap-cell.ts and docs/aws.md).
export { bootstrapCell, bootstrapFnFor, BootstrapError, type BootstrapCellOptions, type BootstrapResult, type CsrSigner, type TokenConsumer } from './bootstrap-cell.js';
