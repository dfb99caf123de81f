#!/usr/bin/env node
// `cellctl`: the command line for a Cello controller (kubectl-like).
import { buildProgram } from '../cellctl/commands.js';

await buildProgram().parseAsync(process.argv);
