/**
 * The WAL-index header, read straight from the `-shm` file (SQLite's documented wal-index
 * format): how long the WAL is, how much of it is copied into the database, and a checksum that
 * changes with every frame written. One pread, no lock: a value torn by a concurrent writer is
 * possible and harmless to the callers (a heuristic, or a before/after comparison made on the
 * only writer's own thread).
 *
 * Layout (native byte order): offset 0 iVersion (3007000), 14 szPage (1 means 65536),
 * 16 mxFrame, 24 aFrameCksum[2]; the checkpoint info follows both header copies: 96 nBackfill.
 */
import { closeSync, openSync, readSync } from 'node:fs';

const WAL_INDEX_VERSION = 3007000;
const HEADER_BYTES = 100;

export interface WalState {
  /** Frames in the WAL (mxFrame). */
  frames: number;
  /** Frames already copied into the database (nBackfill). */
  copied: number;
  /** Bytes per frame: the page size plus the 24-byte frame header. */
  frameBytes: number;
  /** The running checksum of the last frame: changes whenever a frame is written. */
  checksum: string;
}

export class WalIndex {
  private fd?: number;
  private readonly buf = Buffer.alloc(HEADER_BYTES);

  constructor(private readonly dbFile: string) {}

  /** The header now, or undefined while the -shm file does not exist yet. */
  read(): WalState | undefined {
    try {
      this.fd ??= openSync(`${this.dbFile}-shm`, 'r');
      if (readSync(this.fd, this.buf, 0, HEADER_BYTES, 0) < HEADER_BYTES) return undefined;
    } catch {
      return undefined;
    }
    const h = this.buf;
    const le = h.readUInt32LE(0) === WAL_INDEX_VERSION;
    const u16 = (o: number) => (le ? h.readUInt16LE(o) : h.readUInt16BE(o));
    const u32 = (o: number) => (le ? h.readUInt32LE(o) : h.readUInt32BE(o));
    const page = u16(14);
    return {
      frames: u32(16),
      copied: u32(96),
      frameBytes: (page === 1 ? 65536 : page) + 24,
      checksum: `${u32(24)}:${u32(28)}`,
    };
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
