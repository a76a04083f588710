import type { BlobColumn } from './types.js';

/** Pack blobs into one `BlobColumn` (one copy here instead of one clone per blob to the writer). */
export function blobColumn(blobs: readonly Uint8Array[]): BlobColumn {
  let size = 0;
  for (const b of blobs) size += b.length;
  const bytes = Buffer.allocUnsafe(size);
  const ends = new Uint32Array(blobs.length);
  let at = 0;
  for (let i = 0; i < blobs.length; i++) {
    bytes.set(blobs[i]!, at);
    at += blobs[i]!.length;
    ends[i] = at;
  }
  return { bytes, ends };
}
