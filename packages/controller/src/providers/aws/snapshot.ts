// Regenerates the bundled catalog snapshot (data/aws-instance-types.json) from a live
// DescribeInstanceTypes: `node dist/providers/aws/snapshot.js [--region R] [--endpoint URL]
// [--source TEXT] > data/aws-instance-types.json`. Credentials come from the SDK's default chain.
import { EC2Client } from '@aws-sdk/client-ec2';
import { Command } from 'commander';
import { describeAllTypes } from './catalog.js';

const program = new Command('aws-catalog-snapshot')
  .description('Print the instance-type snapshot (specs only; prices live in data/aws-prices.json) as JSON')
  .option('--region <region>', 'AWS region to describe', process.env['AWS_REGION'] ?? 'us-east-1')
  .option('--endpoint <url>', 'EC2 endpoint (an EC2-compatible API)')
  .option('--source <text>', 'what to record as the source of the figures')
  .action(async (o: { region: string; endpoint?: string; source?: string }) => {
    const ec2 = new EC2Client({ region: o.region, ...(o.endpoint ? { endpoint: o.endpoint } : {}) });
    const types = await describeAllTypes(ec2);
    ec2.destroy();
    const doc = {
      source: o.source ?? `DescribeInstanceTypes, region ${o.region}${o.endpoint ? `, endpoint ${o.endpoint}` : ''}`,
      retrievedAt: new Date().toISOString().slice(0, 10),
      types,
    };
    process.stdout.write(JSON.stringify(doc, null, 0).replace(/\},\{/g, '},\n{') + '\n');
  });

if (import.meta.url === `file://${process.argv[1]}`) {
  program.parseAsync().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
