/**
 * Zigzag varints for the columnar batch encoding. Arithmetic instead of bit operations, because
 * ids, timestamps and scaled metric values exceed 32 bits; every value written must satisfy
 * |v| <= MAX_ZIGZAG so that 2|v| stays an exact double.
 */
export const MAX_ZIGZAG = 2 ** 51;

export function zigzag(v: number): number {
  return v >= 0 ? v * 2 : -v * 2 - 1;
}

export function unzigzag(u: number): number {
  return u % 2 === 0 ? u / 2 : -(u + 1) / 2;
}

/** A growable byte buffer of unsigned varints (LEB128). */
export class VarintWriter {
  private buf: Buffer;
  private len = 0;
  constructor(initial = 256) {
    this.buf = Buffer.allocUnsafe(initial);
  }
  /** `u` must be a non-negative integer below 2^53. */
  uint(u: number): void {
    if (this.len + 8 > this.buf.length) {
      const next = Buffer.allocUnsafe(this.buf.length * 2 + 8);
      this.buf.copy(next, 0, 0, this.len);
      this.buf = next;
    }
    while (u >= 128) {
      this.buf[this.len++] = (u % 128) | 128;
      u = Math.floor(u / 128);
    }
    this.buf[this.len++] = u;
  }
  int(v: number): void {
    this.uint(zigzag(v));
  }
  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.len));
  }
}

export class VarintReader {
  private pos = 0;
  constructor(private readonly buf: Uint8Array) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  uint(): number {
    let result = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.buf.length) throw new RangeError('varint runs past the end of its column');
      const b = this.buf[this.pos++]!;
      result += (b & 127) * mul;
      if (b < 128) return result;
      mul *= 128;
      // 8 groups of 7 bits cover 2^56: anything longer is hostile input.
      if (mul > 2 ** 56) throw new RangeError('varint longer than 8 bytes');
    }
  }
  int(): number {
    return unzigzag(this.uint());
  }
}
