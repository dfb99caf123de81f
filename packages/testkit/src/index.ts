export { freePort } from './net.js';
export { waitFor } from './wait.js';
