import { createRequire } from 'node:module';

/** This package's version: cello-cri's RuntimeVersion in the CRI Version answer. */
export const CRI_VERSION: string = (createRequire(import.meta.url)('../package.json') as { version: string }).version;
