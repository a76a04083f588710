/**
 * The IOPS-limited card (docs/store.md, "SD-card benchmark"): a fresh 3 GiB image on a loop
 * device, ext4 made with lazy initialisation off (else ext4 keeps initialising in the background
 * and its writes count), mounted noatime as Raspberry Pi OS mounts its root, and a cgroup v1
 * blkio group that throttles writes to that device to WRITE_IOPS and WRITE_BPS. A server is
 * moved into the group before it execs, so everything it (and its children) submit is throttled.
 *
 * What the throttle sees is not everything the card gets (measured on this model, kernel 6.x):
 * ext4's journal is written by its jbd2 thread and page-cache writeback by the kernel's flusher
 * threads, neither in the group, so those writes are counted on the device but not throttled. A
 * write the server makes durable itself (write + fsync/fdatasync) is throttled, and so is a cache
 * flush it issues directly (an fdatasync that changes no metadata: one more write I/O). stat()
 * counts the device (all of it); throttled() counts what went through the group.
 *
 * Every card is torn down by destroy(): processes left in its group killed, unmounted, the loop
 * device detached, the group removed, the image deleted. Names carry the bench's pid
 * (`ek-sdcard-<pid>-`), so sweepStale() can remove what a killed bench left behind without
 * touching anyone else's loop devices or groups.
 */
import { type ChildProcess, execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  rmdirSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';

/** Write I/Os per second and bytes per second the card takes: a cheap SD card's random-write budget. */
export const WRITE_IOPS = 150;
export const WRITE_BPS = 10 * 1024 * 1024;
const CARD_BYTES = 3 * 1024 ** 3;
const BLKIO = '/sys/fs/cgroup/blkio';
const PREFIX = 'ek-sdcard-';

export interface IoCount {
  /** Write I/Os completed. */
  writeIos: number;
  /** Bytes written. */
  writeBytes: number;
}

export interface FileInfo {
  size: number;
  /** Bytes allocated on the card. */
  allocated: number;
  mtimeMs: number;
}

/** What the card model needs from this machine, as a list of problems (empty: all there). */
export function missingPeers(): string[] {
  const out: string[] = [];
  if (process.getuid?.() !== 0) out.push('root (loop devices, mount and cgroups)');
  if (!existsSync('/dev/loop-control')) out.push('loop devices (/dev/loop-control)');
  if (!existsSync(join(BLKIO, 'blkio.throttle.write_iops_device')))
    out.push(`cgroup v1 blkio with throttling (${BLKIO}/blkio.throttle.write_iops_device)`);
  for (const [bin, pkg] of [
    ['losetup', 'util-linux'],
    ['mkfs.ext4', 'e2fsprogs'],
    ['mount', 'mount'],
  ] as const) {
    if (!onPath(bin)) out.push(`${bin} (Debian package ${pkg})`);
  }
  return out;
}

export function onPath(bin: string): boolean {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  return dirs.some((d) => d && existsSync(join(d, bin)));
}

/**
 * Where card images go: EDGEKEEPER_BENCH_SDCARD_IMAGE_DIR, else /dev/shm when it can hold a
 * whole card, else the temp directory. On tmpfs the card's cost is the throttle alone; an image
 * on a disk adds that disk's flush latency to every flush the card gets (on a shared VM, several
 * ms and noisy), which a real card's controller would not have on top of its own.
 */
export function imageDir(): string {
  const env = process.env.EDGEKEEPER_BENCH_SDCARD_IMAGE_DIR;
  if (env) return env;
  try {
    const s = statfsSync('/dev/shm');
    if (s.bavail * s.bsize >= CARD_BYTES) return '/dev/shm';
  } catch {
    // no /dev/shm
  }
  return tmpdir();
}

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function procsOf(cgroup: string): number[] {
  try {
    return readFileSync(join(cgroup, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Kill whatever is left in a group we made, and wait (up to 10 s) until it is empty. */
function emptyGroup(cgroup: string): void {
  for (let i = 0; i < 100; i++) {
    const pids = procsOf(cgroup);
    if (pids.length === 0) return;
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    sleepSync(100);
  }
  throw new Error(`processes ${procsOf(cgroup).join(', ')} are still in ${cgroup}`);
}

function mountsOf(device: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[0] === device)
    .map((f) => f[1]!.replace(/\\040/g, ' '));
}

function unmount(dir: string): void {
  for (let i = 0; ; i++) {
    try {
      sh('umount', [dir]);
      return;
    } catch (err) {
      if (i >= 20) {
        // still busy after 2 s: detach it lazily rather than leave it mounted
        sh('umount', ['-l', dir]);
        throw new Error(`${dir} was busy; unmounted lazily: ${(err as Error).message}`);
      }
      sleepSync(100);
    }
  }
}

export class Card {
  private destroyed = false;

  private constructor(
    /** Temporary directory holding the image and the mount point. */
    readonly dir: string,
    /** Where the card's file system is mounted. */
    readonly mount: string,
    /** /dev/loopN */
    readonly loop: string,
    /** MAJ:MIN of the loop device. */
    readonly majMin: string,
    readonly cgroup: string,
  ) {}

  /** A fresh card, throttled. Whatever fails half-way is undone before the error is thrown. */
  static create(): Card {
    const dir = mkdtempSync(join(imageDir(), `${PREFIX}${process.pid}-`));
    const image = join(dir, 'sd.img');
    const mount = join(dir, 'sd');
    const cgroup = join(BLKIO, basename(dir));
    let loop = '';
    try {
      writeFileSync(image, '');
      execFileSync('truncate', ['-s', String(CARD_BYTES), image]);
      loop = sh('losetup', ['-f', '--show', image]).trim();
      sh('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop]);
      mkdirSync(mount);
      sh('mount', ['-o', 'noatime', loop, mount]);
      const majMin = readFileSync(`/sys/block/${basename(loop)}/dev`, 'utf8').trim();
      mkdirSync(cgroup);
      writeFileSync(join(cgroup, 'blkio.throttle.write_iops_device'), `${majMin} ${WRITE_IOPS}`);
      writeFileSync(join(cgroup, 'blkio.throttle.write_bps_device'), `${majMin} ${WRITE_BPS}`);
      // mkfs and mount leave dirty metadata behind: on the card before anything is measured
      sh('sync', ['-f', mount]);
      return new Card(dir, mount, loop, majMin, cgroup);
    } catch (err) {
      const undo = new Card(dir, mount, loop, '', cgroup);
      try {
        undo.destroy();
      } catch {
        // the first error says more
      }
      throw err;
    }
  }

  /** The device's write counters: /sys/block/loopN/stat fields 5 (I/Os) and 7 (512-byte sectors). */
  stat(): IoCount {
    const f = readFileSync(`/sys/block/${basename(this.loop)}/stat`, 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    return { writeIos: f[4]!, writeBytes: f[6]! * 512 };
  }

  /** Writes that went through the throttling group (submitted by the server itself). */
  throttled(): IoCount {
    const read = (file: string) => {
      const m = new RegExp(`^${this.majMin} Write (\\d+)$`, 'm').exec(
        readFileSync(join(this.cgroup, file), 'utf8'),
      );
      return Number(m?.[1] ?? 0);
    };
    return {
      writeIos: read('blkio.throttle.io_serviced'),
      writeBytes: read('blkio.throttle.io_service_bytes'),
    };
  }

  /** syncfs(2) on the card: whatever is dirty in the page cache goes to the device now. */
  syncfs(): void {
    sh('sync', ['-f', this.mount]);
  }

  /** Spawn `argv` inside the card's group (moved there before it execs, so children follow). */
  spawn(argv: string[], opts: SpawnOptions): ChildProcess {
    return spawn(
      'sh',
      ['-c', 'echo $$ > "$0" && exec "$@"', join(this.cgroup, 'cgroup.procs'), ...argv],
      opts,
    );
  }

  /** Every file on the card (lost+found aside) with its size, allocation and mtime. */
  files(): Map<string, FileInfo> {
    const out = new Map<string, FileInfo>();
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const p = join(d, e.name);
        if (e.isDirectory()) {
          if (d !== this.mount || e.name !== 'lost+found') walk(p);
          continue;
        }
        try {
          const s = lstatSync(p);
          out.set(relative(this.mount, p), { size: s.size, allocated: s.blocks * 512, mtimeMs: s.mtimeMs });
        } catch {
          // removed while we walked (a frame's temporary file)
        }
      }
    };
    walk(this.mount);
    return out;
  }

  /** Tear the card down; idempotent. Throws (after doing all it can) if something was left. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    destroyParts(this.dir, this.loop, this.cgroup);
  }
}

function destroyParts(dir: string, loop: string, cgroup: string): void {
  const errors: string[] = [];
  const step = (what: string, f: () => void) => {
    try {
      f();
    } catch (err) {
      errors.push(`${what}: ${(err as Error).message.trim()}`);
    }
  };
  if (existsSync(cgroup)) step('empty the cgroup', () => emptyGroup(cgroup));
  if (loop) {
    for (const m of mountsOf(loop)) step(`umount ${m}`, () => unmount(m));
    step(`losetup -d ${loop}`, () => sh('losetup', ['-d', loop]));
  }
  if (existsSync(cgroup)) step(`rmdir ${cgroup}`, () => rmdirSync(cgroup));
  step(`rm ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
  if (errors.length > 0) throw new Error(`card teardown: ${errors.join('; ')}`);
}

/** What cards and groups of this bench still exist (the smoke test checks there are none). */
export function leftovers(pid: number): string[] {
  const mark = `${PREFIX}${pid}-`;
  const out: string[] = [];
  for (const g of existsSync(BLKIO) ? readdirSync(BLKIO) : [])
    if (g.startsWith(mark)) out.push(join(BLKIO, g));
  for (const l of loopDevices()) if (l.backFile.includes(mark)) out.push(`${l.name} (${l.backFile})`);
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n'))
    if (line.includes(mark)) out.push(`mount ${line.split(' ')[1]}`);
  // a server still running with its data on one of the cards
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      // etcd names its data directory; the daemon runs in its own (as under systemd)
      if (cmd.includes(mark) || readlinkSync(`/proc/${p}/cwd`).includes(mark))
        out.push(`process ${p}: ${cmd.replace(/\0/g, ' ').slice(0, 200)}`);
    } catch {
      // gone
    }
  }
  return out;
}

function loopDevices(): { name: string; backFile: string }[] {
  try {
    const j = JSON.parse(sh('losetup', ['-J', '-l']) || '{"loopdevices":[]}') as {
      loopdevices: { name: string; 'back-file': string | null }[];
    };
    return j.loopdevices.map((d) => ({ name: d.name, backFile: d['back-file'] ?? '' }));
  } catch {
    return [];
  }
}

/** Remove cards and groups that a bench no longer running left behind. Returns what it removed. */
export function sweepStale(): string[] {
  const removed: string[] = [];
  const deadMark = (s: string) => {
    const m = new RegExp(`${PREFIX}(\\d+)-[A-Za-z0-9]+`).exec(s);
    return m && Number(m[1]) !== process.pid && !alive(Number(m[1])) ? m[0] : undefined;
  };
  for (const l of loopDevices()) {
    const mark = deadMark(l.backFile);
    if (!mark) continue;
    const dir = l.backFile.slice(0, l.backFile.indexOf(mark) + mark.length);
    destroyParts(dir, l.name, join(BLKIO, mark));
    removed.push(dir);
  }
  for (const g of existsSync(BLKIO) ? readdirSync(BLKIO) : []) {
    const mark = deadMark(g);
    if (mark && existsSync(join(BLKIO, g))) {
      emptyGroup(join(BLKIO, g));
      rmdirSync(join(BLKIO, g));
      removed.push(join(BLKIO, g));
    }
  }
  // images whose loop device is gone already (on tmpfs they hold memory)
  for (const base of new Set([imageDir(), tmpdir()])) {
    for (const e of existsSync(base) ? readdirSync(base) : []) {
      const mark = deadMark(e);
      if (mark && !readFileSync('/proc/mounts', 'utf8').includes(join(base, e))) {
        rmSync(join(base, e), { recursive: true, force: true });
        removed.push(join(base, e));
      }
    }
  }
  return removed;
}
