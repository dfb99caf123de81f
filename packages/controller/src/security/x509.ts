// @peculiar/x509 (through tsyringe) needs a Reflect metadata polyfill loaded before it is
// evaluated. Every user of the library imports it from here, so the order is guaranteed.
import 'reflect-metadata';

export * from '@peculiar/x509';
