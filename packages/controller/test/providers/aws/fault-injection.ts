// TEST FAULT INJECTION (an AWS SDK middleware, named as such): moto does not emulate capacity
// shortages or throttling, so these tests make the SDK see EC2's real error responses (the
// same XML EC2 sends, parsed by the SDK's real deserializer and retry logic) for chosen calls.
// Every other call goes to the moto server untouched.
import type { EC2Client } from '@aws-sdk/client-ec2';

export interface FaultRule {
  /** e.g. 'RunInstances', 'DescribeInstances'. */
  command: string;
  /** Which calls fail, from the command's input; all when absent. */
  when?: (input: Record<string, unknown>) => boolean;
  code: string;
  message?: string;
  status?: number;
  /** How many matching calls fail; unlimited when absent. */
  times?: number;
}

export interface FaultLog {
  /** Every call that reached this point (each SDK retry attempt counts), with its input. */
  calls: Array<{ command: string; input: Record<string, unknown>; injected?: string }>;
  count(command: string, pred?: (input: Record<string, unknown>) => boolean): number;
}

function xmlError(code: string, message: string): Buffer {
  return Buffer.from(
    `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code><Message>${message}</Message></Error></Errors><RequestID>00000000-fault-injection</RequestID></Response>`,
  );
}

export function injectEc2Faults(client: EC2Client, rules: FaultRule[]): FaultLog {
  const used = rules.map(() => 0);
  const log: FaultLog = {
    calls: [],
    count: (command, pred) => log.calls.filter((c) => c.command === command && (!pred || pred(c.input))).length,
  };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const command = String((context as { commandName?: string }).commandName ?? '').replace(/Command$/, '');
      const input = (args.input ?? {}) as Record<string, unknown>;
      const entry: FaultLog['calls'][number] = { command, input };
      log.calls.push(entry);
      for (let i = 0; i < rules.length; i++) {
        const r = rules[i]!;
        if (r.command !== command) continue;
        if (r.when && !r.when(input)) continue;
        if (r.times !== undefined && used[i]! >= r.times) continue;
        used[i]!++;
        entry.injected = r.code;
        const body = xmlError(r.code, r.message ?? `${r.code} (injected by the test)`);
        return {
          response: {
            statusCode: r.status ?? 400,
            reason: 'injected',
            headers: { 'content-type': 'text/xml;charset=UTF-8', 'content-length': String(body.length) },
            body,
          },
        } as never;
      }
      return next(args);
    },
    // Inside the retry loop (finalizeRequest) and under the deserializer, so retries and error
    // parsing are the SDK's own.
    { step: 'deserialize', priority: 'low', name: 'testFaultInjection' },
  );
  return log;
}
