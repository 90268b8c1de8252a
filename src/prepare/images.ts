// Pixels: decode a source image once (EXIF orientation applied, alpha flattened onto white, any colour
// space to 8-bit sRGB), then cut and scale it to each of its buckets and write 8-bit RGB PNGs.
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import sharp from 'sharp';
import type { Crop, Size } from '../datasets/buckets.js';

/**
 * Part of every prepared file's key: change it whenever the pixels written for the same source, bucket and
 * crop would change (resampling kernel, flattening colour, colour handling, PNG layout).
 */
export const PREP_VERSION = 'graft-prepare/1 autoOrient flatten-white srgb8 lanczos3';

/** Identity of prepared pixels: hash of the source bytes' sha256, the bucket, the crop box and PREP_VERSION. */
export function contentKey(sourceSha256: string, bucket: Size, crop: Crop): string {
  const id = JSON.stringify([PREP_VERSION, sourceSha256, bucket.width, bucket.height, crop.left, crop.top, crop.width, crop.height]);
  return createHash('sha256').update(id).digest('hex').slice(0, 32);
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Width and height as displayed (EXIF orientation applied), from the header only. */
export async function orientedSize(data: Buffer): Promise<Size> {
  const meta = await sharp(data).metadata();
  return { width: meta.autoOrient.width, height: meta.autoOrient.height };
}

export interface Target {
  bucket: Size;
  crop: Crop;
  file: string;
}

/** Decode once and write every target PNG (each written to a temporary name, then renamed into place). */
export async function renderTargets(data: Buffer, targets: readonly Target[], pngCompression: number): Promise<void> {
  const { data: pixels, info } = await sharp(data)
    .autoOrient()
    .flatten({ background: { r: 255, g: 255, b: 255 } })
    .toColourspace('srgb')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  const raw = { width: info.width, height: info.height, channels: info.channels };
  for (const t of targets) {
    let img = sharp(pixels, { raw });
    const whole = t.crop.left === 0 && t.crop.top === 0 && t.crop.width === info.width && t.crop.height === info.height;
    if (!whole) img = img.extract(t.crop);
    if (t.crop.width !== t.bucket.width || t.crop.height !== t.bucket.height) {
      img = img.resize(t.bucket.width, t.bucket.height, { fit: 'fill', kernel: 'lanczos3' });
    }
    const png = await img.png({ compressionLevel: pngCompression, adaptiveFiltering: false, palette: false }).toBuffer();
    writeReplacing(t.file, png);
  }
}

/** Write then rename, so a crash never leaves a truncated PNG under its final name to be reused later. */
let tmpCount = 0;
function writeReplacing(file: string, data: Buffer): void {
  const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.${tmpCount++}.tmp`);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, file);
  } catch (err) {
    try { unlinkSync(tmp); } catch { /* never written */ }
    throw err;
  }
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** A prepared PNG worth reusing: the right size in its header and its IEND chunk at the end (not cut short). */
export function isCompletePng(file: string, size: Size): boolean {
  let fd: number;
  try { fd = openSync(file, 'r'); } catch { return false; }
  try {
    const head = Buffer.alloc(24);
    if (readSync(fd, head, 0, 24, 0) !== 24 || !head.subarray(0, 8).equals(PNG_SIGNATURE)) return false;
    if (head.readUInt32BE(16) !== size.width || head.readUInt32BE(20) !== size.height) return false;
    const tail = Buffer.alloc(12);
    const bytes = fstatSync(fd).size;
    return bytes >= 36 && readSync(fd, tail, 0, 12, bytes - 12) === 12 && tail.toString('latin1', 4, 8) === 'IEND';
  } finally {
    closeSync(fd);
  }
}
