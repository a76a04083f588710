/**
 * bbolt (etcd's storage engine) files: a streaming writer and a validating reader. No maintained
 * npm package reads or writes bbolt, so this module does, for the one job of etcd snapshots.
 * Everything here was learnt from files etcd 3.4 writes and from bbolt's documented layout.
 *
 * ## The on-disk format (bbolt format version 2; all integers little-endian)
 *
 * The file is an array of pages of `pageSize` bytes (the OS page size where it was created:
 * 4096 on x86-64 and most arm64 kernels; 16K/64K kernels exist). Page `n` starts at byte
 * `n * pageSize`. A page whose content is larger than one page continues over `overflow`
 * further contiguous pages; a reference to it names its first page only.
 *
 * Page header (16 bytes, at the start of every page):
 *   u64 id        the page's own number (a reader checks it)
 *   u16 flags     0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
 *   u16 count     number of elements (branch/leaf) or free ids (freelist; 0xFFFF: a u64 count follows)
 *   u32 overflow  number of extra pages this page spans
 *
 * Meta pages: pages 0 and 1, each a page header then the meta (64 bytes):
 *   u32 magic 0xED0CDAED, u32 version 2, u32 pageSize, u32 flags (0),
 *   u64 root bucket's root page, u64 root bucket's sequence,
 *   u64 freelist page (0xFFFFFFFFFFFFFFFF: none; readers then treat every page not reachable
 *       from the root as free; etcd runs bbolt this way and its snapshots have no freelist),
 *   u64 pgid: the high-water mark, the number of pages the database uses,
 *   u64 txid: the transaction that wrote this meta,
 *   u64 checksum: FNV-64a of the 56 bytes before it.
 * A reader takes the valid meta (magic, version, checksum) with the higher txid. The page size
 * is read from meta 0. etcd's snapshot writes meta 0 with txid T and meta 1 with T-1.
 *
 * B+tree pages. Elements (16 bytes each) follow the header; keys and values follow the elements,
 * each element's `pos` counting from the element's own first byte.
 *   branch element: u32 pos, u32 ksize, u64 child page. Its key is the child's first key.
 *   leaf element:   u32 flags (0x01: the value is a bucket), u32 pos, u32 ksize, u32 vsize.
 * Keys in a page, and across a tree read left to right, ascend bytewise.
 *
 * Buckets. The meta's root bucket is a tree whose leaf elements are the top-level buckets (flag
 * 0x01): the value starts with the bucket header, u64 root page and u64 sequence. Root page 0
 * means an inline bucket: a leaf page (header with id 0, then elements and data) follows the
 * header inside the value. bbolt inlines a bucket with no nested buckets whose leaf page is at
 * most pageSize/4 bytes; this writer does the same.
 *
 * Freelist page: a header (flags 0x10) then `count` u64 free page ids; not written here.
 *
 * ## The writer
 * Builds each bucket's tree bottom-up from keys given in ascending order: a leaf page is written
 * when the next element would not fit; its first key and page number go up into the branch
 * level above, which is written the same way. Memory is one page per tree level (plus a value
 * larger than a page) and an output buffer of about 1 MiB; pages go to the file in the order
 * they are numbered, the root bucket's page last, then the two meta pages at the front.
 *
 * ## The reader
 * Trusts nothing: page numbers below the high-water mark, headers that name their own page,
 * page types where they belong, elements inside their page, keys ascending, each page reached
 * once per walk (so a loop or a shared page is an error, not a hang), bounded depth and span.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';

export const BBOLT_MAGIC = 0xed0cdaed;
export const BBOLT_VERSION = 2;
const PAGE_HEADER = 16;
const ELEMENT = 16;
const BUCKET_HEADER = 16;
const META_BYTES = 64;
const FLAG_BRANCH = 0x01;
const FLAG_LEAF = 0x02;
const FLAG_META = 0x04;
const FLAG_BUCKET = 0x01;
const NO_FREELIST = 0xffffffffffffffffn;
/** bbolt's page counts are u16; a page of 64 KiB holds at most 4095 elements, far below. */
const MAX_PAGE_SIZE = 65536;
const MIN_PAGE_SIZE = 512;
/** Flush the writer's output once this much is buffered. */
const FLUSH_BYTES = 1024 * 1024;
/** Deeper than any real bbolt tree (2^40 keys at fan-out 100 need 6 levels): a loop. */
const MAX_DEPTH = 32;
/** The largest page (with its overflow) the reader loads: an etcd value is 1.5 MiB by default. */
const MAX_SPAN = 64 * 1024 * 1024;

/** A reader refusal; the etcd layer turns it into its typed error with the file name. */
export class BoltFormatError extends Error {
  constructor(
    readonly kind: 'not-bbolt' | 'version' | 'corrupt',
    message: string,
  ) {
    super(message);
  }
}

/** FNV-64a, bbolt's meta checksum. */
export function fnv64a(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

function metaPage(pageSize: number, id: number, root: number, pgid: number, txid: number): Buffer {
  const p = Buffer.alloc(pageSize);
  p.writeBigUInt64LE(BigInt(id), 0);
  p.writeUInt16LE(FLAG_META, 8);
  const m = PAGE_HEADER;
  p.writeUInt32LE(BBOLT_MAGIC, m);
  p.writeUInt32LE(BBOLT_VERSION, m + 4);
  p.writeUInt32LE(pageSize, m + 8);
  p.writeUInt32LE(0, m + 12);
  p.writeBigUInt64LE(BigInt(root), m + 16);
  p.writeBigUInt64LE(0n, m + 24);
  p.writeBigUInt64LE(NO_FREELIST, m + 32);
  p.writeBigUInt64LE(BigInt(pgid), m + 40);
  p.writeBigUInt64LE(BigInt(txid), m + 48);
  p.writeBigUInt64LE(fnv64a(p.subarray(m, m + 56)), m + 56);
  return p;
}

// --- writer ---------------------------------------------------------------------------------------

interface LeafEntry {
  key: Buffer;
  value: Buffer;
  flags: number;
}
interface BranchEntry {
  key: Buffer;
  pgid: number;
}

/** One page being filled: its elements and its byte size so far (header included). */
class Node<E> {
  entries: E[] = [];
  size = PAGE_HEADER;
}

function leafBytes(n: Node<LeafEntry>, id: number, padTo: number): Buffer {
  const len = padTo > 0 ? Math.ceil(n.size / padTo) * padTo : n.size;
  const p = Buffer.alloc(len);
  p.writeBigUInt64LE(BigInt(id), 0);
  p.writeUInt16LE(FLAG_LEAF, 8);
  p.writeUInt16LE(n.entries.length, 10);
  p.writeUInt32LE(padTo > 0 ? len / padTo - 1 : 0, 12);
  let data = PAGE_HEADER + n.entries.length * ELEMENT;
  n.entries.forEach((e, i) => {
    const at = PAGE_HEADER + i * ELEMENT;
    p.writeUInt32LE(e.flags, at);
    p.writeUInt32LE(data - at, at + 4);
    p.writeUInt32LE(e.key.length, at + 8);
    p.writeUInt32LE(e.value.length, at + 12);
    data += e.key.copy(p, data);
    data += e.value.copy(p, data);
  });
  return p;
}

function branchBytes(n: Node<BranchEntry>, id: number, pageSize: number): Buffer {
  const len = Math.ceil(n.size / pageSize) * pageSize;
  const p = Buffer.alloc(len);
  p.writeBigUInt64LE(BigInt(id), 0);
  p.writeUInt16LE(FLAG_BRANCH, 8);
  p.writeUInt16LE(n.entries.length, 10);
  p.writeUInt32LE(len / pageSize - 1, 12);
  let data = PAGE_HEADER + n.entries.length * ELEMENT;
  n.entries.forEach((e, i) => {
    const at = PAGE_HEADER + i * ELEMENT;
    p.writeUInt32LE(data - at, at);
    p.writeUInt32LE(e.key.length, at + 4);
    p.writeBigUInt64LE(BigInt(e.pgid), at + 8);
    data += e.key.copy(p, data);
  });
  return p;
}

/** Builds one tree bottom-up from ascending keys; pages go out through `emit`. */
class TreeBuilder {
  private readonly leaf = new Node<LeafEntry>();
  /** levels[0] is the branch level right above the leaves. */
  private readonly levels: Node<BranchEntry>[] = [];
  private pagesOut = 0;
  private last?: Buffer;

  constructor(
    private readonly pageSize: number,
    private readonly emit: (page: (id: number) => Buffer, pages: number) => number,
    private readonly what: string,
  ) {}

  put(key: Buffer, value: Buffer, flags = 0): void {
    if (this.last && Buffer.compare(this.last, key) >= 0)
      throw new Error(
        `${this.what}: keys must ascend (${this.last.toString('hex')} then ${key.toString('hex')})`,
      );
    this.last = key;
    const add = ELEMENT + key.length + value.length;
    if (this.leaf.entries.length > 0 && this.leaf.size + add > this.pageSize) this.flushLeaf();
    this.leaf.entries.push({ key, value, flags });
    this.leaf.size += add;
  }

  private flushLeaf(): void {
    const n = this.leaf;
    const pages = Math.ceil(n.size / this.pageSize);
    const entries = n.entries;
    const snapshot = { entries, size: n.size };
    const id = this.emit((pid) => leafBytes(snapshot, pid, this.pageSize), pages);
    this.pagesOut++;
    this.up(0, entries[0]!.key, id);
    n.entries = [];
    n.size = PAGE_HEADER;
  }

  private up(level: number, key: Buffer, pgid: number): void {
    let n = this.levels[level];
    if (!n) {
      n = new Node<BranchEntry>();
      this.levels[level] = n;
    }
    const add = ELEMENT + key.length;
    if (n.entries.length > 0 && n.size + add > this.pageSize) this.flushBranch(level);
    n.entries.push({ key, pgid });
    n.size += add;
  }

  private flushBranch(level: number): void {
    const n = this.levels[level]!;
    const snapshot = { entries: n.entries, size: n.size };
    const pages = Math.ceil(n.size / this.pageSize);
    const id = this.emit((pid) => branchBytes(snapshot, pid, this.pageSize), pages);
    this.up(level + 1, n.entries[0]!.key, id);
    n.entries = [];
    n.size = PAGE_HEADER;
  }

  /**
   * Ends the tree. Returns the root page, or (when `inlineOk` and the whole tree is one small
   * leaf) the inline leaf page to embed in the bucket's value.
   */
  finish(inlineOk: boolean): { root: number } | { inline: Buffer } {
    if (inlineOk && this.pagesOut === 0 && this.leaf.size <= this.pageSize / 4)
      return { inline: leafBytes(this.leaf, 0, 0) };
    this.flushLeaf0();
    for (let level = 0; ; level++) {
      const n = this.levels[level]!;
      if (n.entries.length === 1 && this.levels[level + 1] === undefined) return { root: n.entries[0]!.pgid };
      this.flushBranch(level);
    }
  }

  /** Writes the last leaf, even an empty one (a tree always has a root page). */
  private flushLeaf0(): void {
    if (this.leaf.entries.length > 0) {
      this.flushLeaf();
      return;
    }
    if (this.pagesOut > 0) return;
    const snapshot = { entries: [] as LeafEntry[], size: PAGE_HEADER };
    const id = this.emit((pid) => leafBytes(snapshot, pid, this.pageSize), 1);
    this.pagesOut++;
    // The level above needs a key for it; an empty tree has one page and no parent.
    this.levels[0] = new Node<BranchEntry>();
    this.levels[0].entries.push({ key: Buffer.alloc(0), pgid: id });
  }
}

export interface BoltWriterOptions {
  /** Page size in bytes; default 4096 (what etcd on x86-64 and most Raspberry Pi kernels writes). */
  pageSize?: number;
}

/**
 * Writes a new bbolt file with top-level buckets. Buckets must be begun in ascending name order
 * and their keys put in ascending order; `put` is synchronous, so a caller that puts many keys
 * awaits `flush()` whenever `buffered` passes `FLUSH_BYTES` (`maybeFlush()` does that).
 */
export class BoltWriter {
  readonly pageSize: number;
  private nextPage = 2;
  private out: Buffer[] = [];
  private outBytes = 0;
  private filePos: number;
  private readonly rootEntries: LeafEntry[] = [];
  private tree?: { name: Buffer; b: TreeBuilder };
  private finished = false;

  private constructor(
    private readonly fh: FileHandle,
    pageSize: number,
  ) {
    this.pageSize = pageSize;
    this.filePos = 2 * pageSize;
  }

  /** Creates `file` (it must not exist). */
  static async create(file: string, opts: BoltWriterOptions = {}): Promise<BoltWriter> {
    const pageSize = opts.pageSize ?? 4096;
    if (pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0)
      throw new RangeError(`bbolt page size must be a power of two in ${MIN_PAGE_SIZE}..${MAX_PAGE_SIZE}`);
    return new BoltWriter(await open(file, 'wx'), pageSize);
  }

  private emit = (page: (id: number) => Buffer, pages: number): number => {
    const id = this.nextPage;
    this.nextPage += pages;
    const bytes = page(id);
    this.out.push(bytes);
    this.outBytes += bytes.length;
    return id;
  };

  beginBucket(name: Buffer): void {
    if (this.tree) throw new Error('bbolt writer: end the current bucket first');
    const prev = this.rootEntries[this.rootEntries.length - 1];
    if (prev && Buffer.compare(prev.key, name) >= 0)
      throw new Error('bbolt writer: buckets must ascend by name');
    this.tree = { name, b: new TreeBuilder(this.pageSize, this.emit, `bucket ${name}`) };
  }

  put(key: Buffer, value: Buffer): void {
    if (!this.tree) throw new Error('bbolt writer: no bucket begun');
    if (key.length === 0) throw new Error('bbolt writer: empty key');
    this.tree.b.put(key, value);
  }

  endBucket(): void {
    if (!this.tree) throw new Error('bbolt writer: no bucket begun');
    const r = this.tree.b.finish(true);
    const header = Buffer.alloc(BUCKET_HEADER);
    let value: Buffer;
    if ('inline' in r) value = Buffer.concat([header, r.inline]);
    else {
      header.writeBigUInt64LE(BigInt(r.root), 0);
      value = header;
    }
    this.rootEntries.push({ key: this.tree.name, value, flags: FLAG_BUCKET });
    this.tree = undefined;
  }

  /** Convenience: one whole bucket from an iterable of [key, value]. */
  async bucket(name: Buffer, entries: Iterable<[Buffer, Buffer]>): Promise<void> {
    this.beginBucket(name);
    for (const [k, v] of entries) {
      this.put(k, v);
      await this.maybeFlush();
    }
    this.endBucket();
  }

  get buffered(): number {
    return this.outBytes;
  }

  async maybeFlush(): Promise<void> {
    if (this.outBytes >= FLUSH_BYTES) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.outBytes === 0) return;
    const bufs = this.out;
    const len = this.outBytes;
    this.out = [];
    this.outBytes = 0;
    let pos = this.filePos;
    this.filePos += len;
    for (const b of bufs) {
      let off = 0;
      while (off < b.length) {
        const { bytesWritten } = await this.fh.write(b, off, b.length - off, pos);
        off += bytesWritten;
        pos += bytesWritten;
      }
    }
  }

  /**
   * Writes the root bucket's pages and both meta pages, closes the file. `sync` fsyncs it first.
   * Returns the file's size (pages x page size).
   */
  async finish(opts: { sync?: boolean; txid?: number } = {}): Promise<{ size: number; pages: number }> {
    if (this.tree) throw new Error('bbolt writer: end the current bucket first');
    if (this.finished) throw new Error('bbolt writer: already finished');
    this.finished = true;
    const root = new TreeBuilder(this.pageSize, this.emit, 'root bucket');
    for (const e of this.rootEntries) root.put(e.key, e.value, e.flags);
    const r = root.finish(false) as { root: number };
    await this.flush();
    const pages = this.nextPage;
    const txid = Math.max(2, opts.txid ?? 2);
    await this.fh.write(metaPage(this.pageSize, 0, r.root, pages, txid), 0, this.pageSize, 0);
    await this.fh.write(metaPage(this.pageSize, 1, r.root, pages, txid - 1), 0, this.pageSize, this.pageSize);
    if (opts.sync) await this.fh.sync();
    await this.fh.close();
    return { size: pages * this.pageSize, pages };
  }

  /** Closes the file without finishing it (the caller removes it). */
  async abort(): Promise<void> {
    this.finished = true;
    await this.fh.close().catch(() => undefined);
  }
}

// --- reader ---------------------------------------------------------------------------------------

interface Meta {
  pageSize: number;
  root: number;
  pgid: number;
  txid: bigint;
}

type MetaCheck = { ok: true; meta: Meta } | { ok: false; magic: boolean; why: string };

function parseMeta(b: Buffer, at: number): MetaCheck {
  if (b.length < at + META_BYTES) return { ok: false, magic: false, why: 'too short for a meta page' };
  if (b.readUInt32LE(at) !== BBOLT_MAGIC) return { ok: false, magic: false, why: 'no bbolt magic' };
  const version = b.readUInt32LE(at + 4);
  if (version !== BBOLT_VERSION)
    return {
      ok: false,
      magic: true,
      why: `bbolt format version ${version} (only ${BBOLT_VERSION} is known)`,
    };
  const sum = b.readBigUInt64LE(at + 56);
  if (sum !== fnv64a(b.subarray(at, at + 56)))
    return { ok: false, magic: true, why: 'meta checksum mismatch' };
  const root = b.readBigUInt64LE(at + 16);
  const pgid = b.readBigUInt64LE(at + 40);
  const big = BigInt(Number.MAX_SAFE_INTEGER);
  if (root > big || pgid > big) return { ok: false, magic: true, why: 'page numbers out of range' };
  return {
    ok: true,
    meta: {
      pageSize: b.readUInt32LE(at + 8),
      root: Number(root),
      pgid: Number(pgid),
      txid: b.readBigUInt64LE(at + 48),
    },
  };
}

interface Page {
  id: number;
  buf: Buffer;
  flags: number;
  count: number;
}

export interface BoltReaderOptions {
  /** Bytes of the file that belong to the database (etcd's snapshot appends a SHA-256). */
  length?: number;
}

/** A read-only view of a bbolt file, every structure checked as it is read. */
export class BoltReader {
  readonly pageSize: number;
  /** The high-water mark: pages the database uses. */
  readonly pageCount: number;
  readonly txid: bigint;
  private readonly root: number;
  private closed = false;

  private constructor(
    private readonly fd: number,
    meta: Meta,
  ) {
    this.pageSize = meta.pageSize;
    this.pageCount = meta.pgid;
    this.txid = meta.txid;
    this.root = meta.root;
  }

  static open(file: string, opts: BoltReaderOptions = {}): BoltReader {
    const fd = openSync(file, 'r');
    try {
      const size = opts.length ?? fstatSync(fd).size;
      const meta = BoltReader.chooseMeta(fd, size);
      const { pageSize, pgid, root } = meta;
      if (pageSize < MIN_PAGE_SIZE || pageSize > MAX_PAGE_SIZE || (pageSize & (pageSize - 1)) !== 0)
        throw new BoltFormatError('corrupt', `page size ${pageSize} is not a power of two in 512..65536`);
      if (pgid < 3)
        throw new BoltFormatError('corrupt', `the meta page counts ${pgid} pages; a database has at least 3`);
      if (pgid * pageSize > size)
        throw new BoltFormatError(
          'corrupt',
          `truncated: the meta page counts ${pgid} pages of ${pageSize} bytes (${pgid * pageSize} bytes), the file holds ${size}`,
        );
      if (root < 2 || root >= pgid)
        throw new BoltFormatError(
          'corrupt',
          `the root bucket's page ${root} is outside pages 2..${pgid - 1}`,
        );
      return new BoltReader(fd, meta);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  private static chooseMeta(fd: number, size: number): Meta {
    const first = Buffer.alloc(Math.min(size, MAX_PAGE_SIZE + PAGE_HEADER + META_BYTES));
    readSync(fd, first, 0, first.length, 0);
    if (first.length < PAGE_HEADER + META_BYTES)
      throw new BoltFormatError('not-bbolt', `${size} bytes is too short for a bbolt database`);
    const m0 = parseMeta(first, PAGE_HEADER);
    // Meta 1 sits one page further; meta 0 tells the page size, or (damaged) assume the default.
    let pageSize = 4096;
    if (m0.ok) pageSize = m0.meta.pageSize;
    else if (m0.magic) {
      const ps = first.readUInt32LE(PAGE_HEADER + 8);
      if (ps >= MIN_PAGE_SIZE && ps <= MAX_PAGE_SIZE && (ps & (ps - 1)) === 0) pageSize = ps;
    }
    let m1: MetaCheck = { ok: false, magic: false, why: 'missing' };
    if (pageSize >= MIN_PAGE_SIZE && pageSize <= MAX_PAGE_SIZE && size >= 2 * pageSize) {
      const b = Buffer.alloc(PAGE_HEADER + META_BYTES);
      readSync(fd, b, 0, b.length, pageSize);
      m1 = parseMeta(b, PAGE_HEADER);
    }
    if (m0.ok && m1.ok)
      return m1.meta.txid > m0.meta.txid && m1.meta.pageSize === pageSize ? m1.meta : m0.meta;
    if (m0.ok) return m0.meta;
    if (m1.ok) return m1.meta;
    if (!m0.magic && !m1.magic)
      throw new BoltFormatError('not-bbolt', 'not a bbolt database (no bbolt magic in its meta pages)');
    const why = m0.magic ? m0.why : m1.why;
    throw new BoltFormatError(
      why.startsWith('bbolt format version') ? 'version' : 'corrupt',
      `both meta pages are unusable: ${why}`,
    );
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }

  private page(id: number, seen: Uint8Array): Page {
    if (id < 2 || id >= this.pageCount)
      throw new BoltFormatError(
        'corrupt',
        `a reference to page ${id}, outside pages 2..${this.pageCount - 1}`,
      );
    const head = Buffer.alloc(PAGE_HEADER);
    readSync(this.fd, head, 0, PAGE_HEADER, id * this.pageSize);
    const own = head.readBigUInt64LE(0);
    if (own !== BigInt(id)) throw new BoltFormatError('corrupt', `page ${id} says it is page ${own}`);
    const flags = head.readUInt16LE(8);
    const count = head.readUInt16LE(10);
    const overflow = head.readUInt32LE(12);
    if (flags !== FLAG_BRANCH && flags !== FLAG_LEAF)
      throw new BoltFormatError(
        'corrupt',
        `page ${id} has type 0x${flags.toString(16)} where a branch or leaf page belongs`,
      );
    if (id + overflow >= this.pageCount)
      throw new BoltFormatError(
        'corrupt',
        `page ${id} claims ${overflow} overflow pages, past the last page ${this.pageCount - 1}`,
      );
    const span = (overflow + 1) * this.pageSize;
    if (span > MAX_SPAN)
      throw new BoltFormatError(
        'corrupt',
        `page ${id} spans ${span} bytes, more than the ${MAX_SPAN} this reader loads`,
      );
    for (let p = id; p <= id + overflow; p++) {
      if (seen[p >> 3]! & (1 << (p & 7)))
        throw new BoltFormatError('corrupt', `page ${p} is reached twice (a loop or a shared page)`);
      seen[p >> 3]! |= 1 << (p & 7);
    }
    const buf = Buffer.alloc(span);
    readSync(this.fd, buf, 0, span, id * this.pageSize);
    if (PAGE_HEADER + count * ELEMENT > span)
      throw new BoltFormatError(
        'corrupt',
        `page ${id} claims ${count} elements, more than fit in ${span} bytes`,
      );
    return { id, buf, flags, count };
  }

  /** Leaf elements of a page buffer (a tree page, or an inline bucket's page). */
  private *leafElements(p: Page, where: string): Generator<{ flags: number; key: Buffer; value: Buffer }> {
    for (let i = 0; i < p.count; i++) {
      const at = PAGE_HEADER + i * ELEMENT;
      const flags = p.buf.readUInt32LE(at);
      const start = at + p.buf.readUInt32LE(at + 4);
      const ksize = p.buf.readUInt32LE(at + 8);
      const vsize = p.buf.readUInt32LE(at + 12);
      if (start + ksize + vsize > p.buf.length)
        throw new BoltFormatError('corrupt', `${where}: element ${i} points past the end of its page`);
      yield {
        flags,
        key: p.buf.subarray(start, start + ksize),
        value: p.buf.subarray(start + ksize, start + ksize + vsize),
      };
    }
  }

  /** Every leaf element of the tree at `root`, in key order, keys checked to ascend. */
  private *walk(root: number, what: string): Generator<{ flags: number; key: Buffer; value: Buffer }> {
    const seen = new Uint8Array((this.pageCount >> 3) + 1);
    let last: Buffer | undefined;
    // A branch key is at most every key below it, and the next branch key above all of them.
    const visit = function* (
      this: BoltReader,
      id: number,
      depth: number,
      lo: Buffer | undefined,
      hi: Buffer | undefined,
    ): Generator<{ flags: number; key: Buffer; value: Buffer }> {
      if (depth > MAX_DEPTH)
        throw new BoltFormatError('corrupt', `${what}: the tree is deeper than ${MAX_DEPTH} levels`);
      const p = this.page(id, seen);
      if (p.flags === FLAG_LEAF) {
        for (const e of this.leafElements(p, `${what}, page ${id}`)) {
          if ((last && Buffer.compare(last, e.key) >= 0) || (lo && Buffer.compare(e.key, lo) < 0))
            throw new BoltFormatError('corrupt', `${what}, page ${id}: keys out of order`);
          if (hi && Buffer.compare(e.key, hi) >= 0)
            throw new BoltFormatError('corrupt', `${what}, page ${id}: a key above its parent's next key`);
          last = e.key;
          yield e;
        }
        return;
      }
      const children: { id: number; key: Buffer }[] = [];
      for (let i = 0; i < p.count; i++) {
        const at = PAGE_HEADER + i * ELEMENT;
        const start = at + p.buf.readUInt32LE(at);
        const ksize = p.buf.readUInt32LE(at + 4);
        if (start + ksize > p.buf.length)
          throw new BoltFormatError(
            'corrupt',
            `${what}, page ${id}: branch element ${i} points past its page`,
          );
        const child = p.buf.readBigUInt64LE(at + 8);
        if (child >= BigInt(this.pageCount))
          throw new BoltFormatError(
            'corrupt',
            `${what}, page ${id}: a reference to page ${child}, past the last page`,
          );
        children.push({ id: Number(child), key: p.buf.subarray(start, start + ksize) });
      }
      for (let i = 0; i < children.length; i++) {
        const c = children[i]!;
        const next = children[i + 1]?.key ?? hi;
        if (next && Buffer.compare(c.key, next) >= 0)
          throw new BoltFormatError('corrupt', `${what}, page ${id}: branch keys out of order`);
        yield* visit.call(this, c.id, depth + 1, i === 0 ? lo : c.key, next);
      }
    };
    yield* visit.call(this, root, 0, undefined, undefined);
  }

  /** The top-level buckets: name and header (root page, or the inline page). */
  private *rootBuckets(): Generator<{ name: Buffer; value: Buffer }> {
    for (const e of this.walk(this.root, 'root bucket')) {
      if (!(e.flags & FLAG_BUCKET)) continue; // a key at the top level: not a bucket, ignored as bbolt does
      if (e.value.length < BUCKET_HEADER)
        throw new BoltFormatError('corrupt', `bucket ${printable(e.key)}: header too short`);
      yield { name: e.key, value: e.value };
    }
  }

  /** Levels of a bucket's tree (0: inline, 1: one leaf page), along its leftmost path. */
  depth(name: string | Buffer): number | undefined {
    const n = Buffer.from(name);
    const b = [...this.rootBuckets()].find((x) => x.name.equals(n));
    if (!b) return undefined;
    let id = b.value.readBigUInt64LE(0);
    let depth = 0;
    const seen = new Uint8Array((this.pageCount >> 3) + 1);
    while (id !== 0n) {
      if (id >= BigInt(this.pageCount) || ++depth > MAX_DEPTH)
        throw new BoltFormatError('corrupt', `bucket ${printable(n)}: bad tree`);
      const p = this.page(Number(id), seen);
      id = p.flags === FLAG_BRANCH && p.count > 0 ? p.buf.readBigUInt64LE(PAGE_HEADER + 8) : 0n;
    }
    return depth;
  }

  bucketNames(): Buffer[] {
    return [...this.rootBuckets()].map((b) => Buffer.from(b.name));
  }

  hasBucket(name: string | Buffer): boolean {
    const n = Buffer.from(name);
    for (const b of this.rootBuckets()) if (b.name.equals(n)) return true;
    return false;
  }

  /**
   * The key/value pairs of a top-level bucket in key order, or undefined if there is no such
   * bucket. Keys and values are views of the page they were read from (each page is read into
   * its own buffer, so they stay valid).
   */
  entries(name: string | Buffer): Iterable<[Buffer, Buffer]> | undefined {
    const n = Buffer.from(name);
    let header: Buffer | undefined;
    for (const b of this.rootBuckets())
      if (b.name.equals(n)) {
        header = Buffer.from(b.value);
        break;
      }
    if (!header) return undefined;
    const h = header;
    const what = `bucket ${printable(n)}`;
    const self = this;
    return {
      *[Symbol.iterator]() {
        const root = h.readBigUInt64LE(0);
        let elements: Iterable<{ flags: number; key: Buffer; value: Buffer }>;
        if (root === 0n) {
          const buf = h.subarray(BUCKET_HEADER);
          if (buf.length < PAGE_HEADER)
            throw new BoltFormatError('corrupt', `${what}: inline page too short`);
          const flags = buf.readUInt16LE(8);
          const count = buf.readUInt16LE(10);
          if (flags !== FLAG_LEAF)
            throw new BoltFormatError(
              'corrupt',
              `${what}: inline page has type 0x${flags.toString(16)}, not leaf`,
            );
          if (PAGE_HEADER + count * ELEMENT > buf.length)
            throw new BoltFormatError(
              'corrupt',
              `${what}: inline page claims ${count} elements, more than fit`,
            );
          elements = self.leafElements({ id: 0, buf, flags, count }, `${what} (inline)`);
        } else {
          if (root >= BigInt(self.pageCount))
            throw new BoltFormatError('corrupt', `${what}: root page ${root} is past the last page`);
          elements = self.walk(Number(root), what);
        }
        let last: Buffer | undefined;
        for (const e of elements) {
          if (e.flags & FLAG_BUCKET)
            throw new BoltFormatError('corrupt', `${what} holds a nested bucket ${printable(e.key)}`);
          // walk() checks the order across pages; this covers the inline page too.
          if (last && Buffer.compare(last, e.key) >= 0)
            throw new BoltFormatError('corrupt', `${what}: keys out of order`);
          last = e.key;
          yield [e.key, e.value] as [Buffer, Buffer];
        }
      },
    };
  }
}

function printable(b: Buffer): string {
  const s = b.toString('latin1');
  return /^[\x20-\x7e]*$/.test(s) ? JSON.stringify(s) : `0x${b.toString('hex')}`;
}
