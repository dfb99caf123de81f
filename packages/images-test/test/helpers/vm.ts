// A virtual machine under qemu (software emulation: no KVM here) booted from a raw disk image
// made from a Chroot's file system, with Debian's own kernel and initramfs. Networking is
// qemu's user mode, restricted: the guest reaches nothing but the forwards given here, and the
// host reaches the guest only through hostfwd on loopback.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { requireCommand, waitExit } from '@cello/testkit';
import type { Chroot } from './chroot.js';

export interface Disk {
  disk: string;
  kernel: string;
  initrd: string;
}

/** ext4 image (label cello-root) of the machine's file system, plus its kernel and initramfs. */
export function makeDisk(m: Chroot, outDir: string, sizeMiB = 2048): Disk {
  requireCommand('mkfs.ext4', 'e2fsprogs');
  const disk = join(outDir, 'disk.raw');
  m.withRoot(`
    cp "$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -1)" ${outDir}/vmlinuz
    cp "$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -1)" ${outDir}/initrd.img
    mkfs.ext4 -q -F -L cello-root -d "$ROOT" ${disk} ${sizeMiB}M`);
  return { disk, kernel: join(outDir, 'vmlinuz'), initrd: join(outDir, 'initrd.img') };
}

export interface VmOptions {
  disk: Disk;
  /** Host loopback port -> guest port. */
  hostfwd: { hostPort: number; guestPort: number }[];
  /** Guest address:port -> host loopback port (each connection through busybox nc). */
  guestfwd: { guestAddr: string; guestPort: number; hostPort: number }[];
  consoleLog: string;
  memoryMiB?: number;
}

export interface Vm {
  process: ChildProcess;
  console(): string;
  stop(): Promise<void>;
}

export function bootVm(o: VmOptions): Vm {
  requireCommand('qemu-system-x86_64', 'qemu-system-x86');
  requireCommand('busybox', 'busybox-static');
  const netdev = [
    'user',
    'id=n0',
    // No route to the host or beyond: only the explicit forwards below.
    'restrict=on',
    // The guest network includes 169.254.169.254, so the metadata service sits where it does on EC2.
    'net=169.254.0.0/16',
    ...o.hostfwd.map((f) => `hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`),
    ...o.guestfwd.map((f) => `guestfwd=tcp:${f.guestAddr}:${f.guestPort}-cmd:busybox nc 127.0.0.1 ${f.hostPort}`),
  ].join(',');
  const args = [
    '-accel',
    'tcg',
    '-cpu',
    'max',
    '-smp',
    '2',
    '-m',
    String(o.memoryMiB ?? 1536),
    '-nographic',
    '-no-reboot',
    '-kernel',
    o.disk.kernel,
    '-initrd',
    o.disk.initrd,
    '-append',
    'root=LABEL=cello-root rw console=ttyS0 net.ifnames=0 panic=-1 systemd.show_status=false',
    '-drive',
    `file=${o.disk.disk},format=raw,if=virtio`,
    '-netdev',
    netdev,
    '-device',
    'virtio-net-pci,netdev=n0',
  ];
  const proc = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log = createWriteStream(o.consoleLog);
  proc.stdout!.pipe(log);
  proc.stderr!.pipe(log);
  return {
    process: proc,
    console: () => {
      try {
        return readFileSync(o.consoleLog, 'utf8');
      } catch {
        return '';
      }
    },
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await waitExit(proc, { what: 'qemu' });
      }
      log.end();
    },
  };
}
