// images/install.sh on a real Debian 12 made with debootstrap (entered with chroot): what it
// installs, that it is idempotent, that it refuses what it must, and that the first boot it
// installs reads the cell's bootstrap from the metadata service the way the unit runs it.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireCommand } from '@cello/testkit';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBundles, type Bundles } from './helpers/bundle.js';
import { Chroot } from './helpers/chroot.js';
import { startMetadataDouble } from './helpers/imds.js';
import { imagesDir, installSh } from './helpers/paths.js';
import { ensureRootfs } from './helpers/rootfs.js';
import { execStart } from './helpers/units.js';

let bundles: Bundles;
let rootfs: string;
const machines: Chroot[] = [];

function machine(): Chroot {
  const m = new Chroot(rootfs);
  machines.push(m);
  m.put(installSh, '/root/install.sh');
  m.put(bundles.tarball('amd64'), `/root/cell-agent-${bundles.version}-linux-amd64.tar.gz`);
  m.put(`${bundles.tarball('amd64')}.sha256`, `/root/cell-agent-${bundles.version}-linux-amd64.tar.gz.sha256`);
  return m;
}

const bundleArg = () => `/root/cell-agent-${bundles.version}-linux-amd64.tar.gz`;

/** SHA-256 of every file install.sh owns, to compare two runs. */
function snapshot(m: Chroot): string {
  return m.sh(
    'find /opt/cello /etc/cello /usr/local/lib/cello /usr/local/bin /etc/systemd/system /etc/sysctl.d /etc/modules-load.d -type f -o -type l | sort | while read -r f; do printf "%s %s %s\\n" "$f" "$(stat -c %a "$f")" "$( [ -L "$f" ] && readlink "$f" || sha256sum <"$f")"; done',
  );
}

function selfSignedCa(): string {
  const dir = execFileSync('mktemp', ['-d'], { encoding: 'utf8' }).trim();
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-keyout',
        join(dir, 'k'),
        '-out',
        join(dir, 'c'),
        '-subj',
        '/CN=cello test CA',
        '-days',
        '1',
      ],
      { stdio: 'ignore' },
    );
    return readFileSync(join(dir, 'c'), 'utf8');
  } finally {
    execFileSync('rm', ['-rf', dir]);
  }
}

beforeAll(() => {
  bundles = ensureBundles();
  rootfs = ensureRootfs('base');
}, 900_000);

afterAll(() => {
  for (const m of machines) m.destroy();
});

describe('install.sh', () => {
  it('--help teaches the options', () => {
    const r = spawnSync('sh', [installSh, '--help'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    for (const s of ['--bundle FILE', '--sha256 HEX', '--metadata', 'Debian 11+', 'Amazon Linux', 'Examples:']) expect(r.stdout).toContain(s);
  });

  it('passes shellcheck (POSIX sh, as it runs before anything is installed)', () => {
    requireCommand('shellcheck', 'shellcheck');
    const r = spawnSync('shellcheck', ['--shell=sh', installSh, join(imagesDir, 'test', 'rootfs.sh')], { encoding: 'utf8' });
    expect(r.stdout).toBe('');
    expect(r.status).toBe(0);
  });

  it('refuses an unsupported OS clearly, changing nothing', () => {
    const m = machine();
    m.sh('printf "ID=fedora\\nVERSION_ID=39\\nNAME=Fedora\\n" > /etc/os-release');
    const r = m.run(['sh', '/root/install.sh', '--bundle', bundleArg()]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('unsupported OS: ID=fedora VERSION_ID=39 in /etc/os-release; supported: Debian 11+, Ubuntu 20.04+, Amazon Linux 2023');
    expect(m.run(['test', '-e', '/opt/cello']).status).not.toBe(0);
    expect(m.run(['sh', '-c', 'command -v runc']).status).not.toBe(0);
    expect(m.run(['sh', '-c', 'command -v nft']).status).not.toBe(0);
  });

  it('refuses a bundle whose checksum does not match, changing nothing', () => {
    const m = machine();
    const r = m.run(['sh', '/root/install.sh', '--bundle', bundleArg(), '--sha256', '0'.repeat(64)]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/checksum mismatch for \/root\/cell-agent-.*: expected 0{64}, got [0-9a-f]{64}/);
    expect(m.run(['test', '-e', '/opt/cello']).status).not.toBe(0);
    const noSum = m.run(['sh', '-c', `rm ${bundleArg()}.sha256 && sh /root/install.sh --bundle ${bundleArg()}`]);
    expect(noSum.status).toBe(1);
    expect(noSum.stderr).toContain('no checksum for');
  });

  describe('on plain Debian 12', () => {
    let m: Chroot;
    beforeAll(() => {
      m = machine();
    });

    it('installs runc, the agent, the units and the kernel settings (with no Node on the machine)', () => {
      expect(m.run(['sh', '-c', 'command -v node || command -v nodejs']).status).not.toBe(0);
      expect(m.run(['sh', '-c', 'command -v runc']).status).not.toBe(0);
      expect(m.run(['sh', '-c', 'command -v nft']).status).not.toBe(0);
      const r = m.run(['sh', '/root/install.sh', '--bundle', bundleArg()], { timeoutMs: 300_000 });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/error|warning/i);
      expect(r.stdout).toContain(`installed cell-agent ${bundles.version} into /opt/cello/agent/${bundles.version}`);

      expect(m.sh('runc --version')).toMatch(/^runc version/);
      // The agent's Service proxy and hostPorts run `nft`.
      expect(m.sh('nft --version')).toMatch(/^nftables v\d/);
      expect(m.sh('cell-agent --version')).toBe(`${bundles.version}\n`);
      expect(m.sh('readlink /opt/cello/agent/current')).toBe(`${bundles.version}\n`);
      expect(m.sh('systemctl is-enabled cell-agent.service cello-first-boot.service')).toBe('enabled\nenabled\n');
      expect(m.sh('cat /etc/modules-load.d/cello.conf')).toMatch(/^overlay$/m);
      expect(m.sh('cat /etc/sysctl.d/90-cello.conf')).toMatch(/^net\.ipv4\.ip_forward = 1$/m);
      expect(m.sh('stat -c %a /var/lib/cello')).toBe('700\n');

      const unit = m.sh('cat /etc/systemd/system/cell-agent.service');
      for (const line of [
        'Restart=always',
        'After=network-online.target cello-first-boot.service',
        'Wants=network-online.target',
        'KillMode=process',
        'Delegate=yes',
        'ProtectSystem=full',
      ]) {
        expect(unit).toContain(line);
      }
      const firstBootUnit = m.sh('cat /etc/systemd/system/cello-first-boot.service');
      expect(firstBootUnit).toContain('NoNewPrivileges=yes');
      // The first boot is the agent's own subcommand: the user data is parsed in one place.
      expect(firstBootUnit).toContain('ExecStart=/usr/local/bin/cell-agent first-boot\n');
      expect(m.run(['test', '-e', '/usr/local/lib/cello/first-boot.mjs']).status).not.toBe(0);
    });

    it("passes systemd's own unit checks", () => {
      const r = m.run(['systemd-analyze', 'verify', '/etc/systemd/system/cell-agent.service', '/etc/systemd/system/cello-first-boot.service']);
      expect(r.stderr.split('\n').filter((l) => /cell-agent|cello-first-boot/.test(l))).toEqual([]);
      expect(r.status).toBe(0);
    });

    it('is idempotent: a second run changes nothing and says so', () => {
      const before = snapshot(m);
      const r = m.run(['sh', '/root/install.sh', '--bundle', bundleArg()]);
      expect(r.status).toBe(0);
      expect(r.stdout).toContain(`done: nothing to change (cell-agent ${bundles.version})`);
      expect(r.stdout).not.toMatch(/^install\.sh: (wrote|installed|linked|enabled)/m);
      expect(snapshot(m)).toBe(before);
    });

    it('removes the first-boot script an older install.sh left, once', () => {
      m.sh('printf "// older first boot\\n" > /usr/local/lib/cello/first-boot.mjs');
      const r = m.run(['sh', '/root/install.sh', '--bundle', bundleArg()]);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('removed /usr/local/lib/cello/first-boot.mjs (now cell-agent first-boot)');
      expect(m.run(['test', '-e', '/usr/local/lib/cello/first-boot.mjs']).status).not.toBe(0);
      const again = m.run(['sh', '/root/install.sh', '--bundle', bundleArg()]);
      expect(again.stdout).toContain(`done: nothing to change (cell-agent ${bundles.version})`);
    });

    it('first boot (as its unit runs it) reads the user data over IMDSv2 and writes the agent settings', async () => {
      const ca = selfSignedCa();
      const userData = JSON.stringify({
        cello: 'cell-bootstrap/v1',
        controllerId: 'ctl-test',
        cellId: 'cell-0001',
        agentPort: 17443,
        caCertPem: ca,
        token: 'one-time-token-not-for-logs',
        tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      });
      const imds = await startMetadataDouble({ cloud: 'aws', userData, instanceId: 'i-0abc123' });
      try {
        m.sh(
          `sed -i -e 's|^CELLO_METADATA=.*|CELLO_METADATA=aws|' -e 's|^CELLO_AWS_IMDS_ENDPOINT=.*|CELLO_AWS_IMDS_ENDPOINT=${imds.url}|' -e 's|^CELLO_AGENT_LISTEN_HOST=.*|CELLO_AGENT_LISTEN_HOST=127.0.0.1|' /etc/cello/first-boot.env`,
        );
        const { argv, env } = execStart(m.sh('cat /etc/systemd/system/cello-first-boot.service'), (p) => {
          const r = m.run(['cat', p]);
          return r.status === 0 ? r.stdout : undefined;
        });
        const r = await m.runAsync(['env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv]);
        expect(r.status, r.stdout + r.stderr).toBe(0);
        expect(r.stdout).not.toContain('one-time-token-not-for-logs');
        expect(imds.requests.map((q) => `${q.method} ${q.path}`)).toEqual(['PUT /latest/api/token', 'GET /latest/user-data', 'GET /latest/meta-data/instance-id']);
        expect(imds.requests.slice(1).every((q) => q.token)).toBe(true);

        const agentEnv = m.sh('cat /etc/cello/agent.env');
        expect(agentEnv).toContain('CELLO_AGENT_LISTEN=127.0.0.1:17443\n');
        expect(agentEnv).toContain('CELLO_CELL_ID=cell-0001\n');
        expect(agentEnv).toContain('CELLO_INSTANCE_ID=i-0abc123\n');
        expect(m.sh('stat -c %a /var/lib/cello/bootstrap/user-data.json')).toBe('600\n');
        expect(m.sh('cat /var/lib/cello/bootstrap/user-data.json')).toBe(userData);
        expect(m.sh('cat /var/lib/cello/bootstrap/ca.pem')).toBe(ca);

        // Only once: the token is single-use.
        const again = await m.runAsync(['env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...argv]);
        expect(again.status).toBe(0);
        expect(again.stdout).toContain('already bootstrapped');
        expect(imds.requests).toHaveLength(3);
      } finally {
        await imds.close();
      }
    });

    it('first boot reads the GCE metadata server too, and refuses bad user data naming the field', async () => {
      const good = {
        cello: 'cell-bootstrap/v1',
        controllerId: 'ctl-test',
        cellId: 'cell-0002',
        agentPort: 17444,
        caCertPem: selfSignedCa(),
        token: 'cbt_0123456789abcdef',
        tokenExpiresAt: new Date(Date.now() + 600_000).toISOString(),
      };
      const run = (cloud: 'aws' | 'gce', url: string) =>
        m.runAsync([
          'sh',
          '-c',
          `rm -f /var/lib/cello/bootstrap/done /etc/cello/agent.env; env CELLO_METADATA=${cloud} CELLO_GCE_METADATA_ENDPOINT=${url} CELLO_AWS_IMDS_ENDPOINT=${url} CELLO_METADATA_TIMEOUT_SECONDS=5 /usr/local/bin/cell-agent first-boot`,
        ]);

      const gce = await startMetadataDouble({ cloud: 'gce', userData: JSON.stringify(good), instanceId: '4242' });
      try {
        const r = await run('gce', gce.url);
        expect(r.status, r.stdout).toBe(0);
        expect(gce.requests.every((q) => q.flavor === 'Google')).toBe(true);
        expect(m.sh('cat /etc/cello/agent.env')).toContain('CELLO_CELL_ID=cell-0002\n');
      } finally {
        await gce.close();
      }

      const { agentPort: _omit, ...noPort } = good;
      const bad = await startMetadataDouble({ cloud: 'aws', userData: JSON.stringify(noPort), instanceId: 'i-1' });
      try {
        const r = await run('aws', bad.url);
        expect(r.status).toBe(1);
        // Checked by the agent's own parser (the one `serve` uses), which names the field.
        expect(r.stdout).toContain('user data field agentPort:');
        expect(m.run(['test', '-e', '/etc/cello/agent.env']).status).not.toBe(0);
      } finally {
        await bad.close();
      }

      const none = await startMetadataDouble({ cloud: 'aws', instanceId: 'i-2' });
      try {
        const r = await run('aws', none.url);
        expect(r.status).toBe(1);
        expect(r.stdout).toContain('this instance has no user data');
      } finally {
        await none.close();
      }
    });
  });
});
