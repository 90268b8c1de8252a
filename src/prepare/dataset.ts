// One dataset folder to prepared pixels, in two passes: collect (scan, captions: cheap, so a broken caption
// file or a dataset without any caption stops preparation before pixel work), then pixels (a PNG per image
// and bucket, reusing what an earlier run wrote). Files that cannot be read are skipped and listed.
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { bucketsFor, centreCrop, type Crop, type Size } from '../datasets/buckets.js';
import { ScanError, scanDataset, type Unreadable } from '../datasets/scan.js';
import { captionOf, readMetadata, type CaptionExt } from './captions.js';
import { PrepareError } from './errors.js';
import { contentKey, isCompletePng, orientedSize, renderTargets, sha256, type Target } from './images.js';
import type { Manifest } from './manifest.js';

export interface CollectedImage {
  /** File name inside the dataset folder. */
  file: string;
  source: string;
  /** The caption found for it; undefined when it has none. problem: its file is not UTF-8. */
  caption?: { text: string; from: CaptionExt; problem?: string };
}

export interface CollectedDataset {
  folder: string;
  images: CollectedImage[];
  /** Files the scan could not read (damaged or unknown headers). */
  skipped: Unreadable[];
  videos: number;
}

export async function collectDataset(folder: string, captionExt: CaptionExt): Promise<CollectedDataset> {
  let scan;
  try {
    scan = await scanDataset(folder);
  } catch (err) {
    if (err instanceof ScanError) throw new PrepareError(err.message);
    throw err;
  }
  if (scan.images === 0) throw new PrepareError(`no images found in ${folder}: it holds ${scan.videos} video${scan.videos === 1 ? '' : 's'}, and video datasets are not prepared yet`);
  const present = new Set(await readdir(folder));
  const metadata = await readMetadata(folder, present);
  const images: CollectedImage[] = [];
  for (const item of scan.items.filter((i) => i.kind === 'image')) {
    const caption = await captionOf({ folder, ext: captionExt, present, metadata }, item.file);
    images.push({ file: item.file, source: join(folder, item.file), ...(caption ? { caption } : {}) });
  }
  return { folder, images, skipped: [...scan.unreadable], videos: scan.videos };
}

export interface PreparedImage extends CollectedImage {
  /** Its size upright (EXIF orientation applied). */
  size: Size;
  buckets: { bucket: Size; crop: Crop; key: string; image: string }[];
}

export interface DatasetPixels {
  images: PreparedImage[];
  skipped: Unreadable[];
  written: number;
  reused: number;
}

export interface PixelOptions {
  resolutions: number[];
  divisibility: number;
  preparedDir: string;
  manifest: Manifest;
  pngCompression: number;
  concurrency: number;
  /** Called after each image with the number done in this dataset. */
  onImage?: (done: number, total: number, written: number, reused: number) => void;
}

function reasonOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ? `cannot read: ${e.code}` : `cannot decode: ${e.message.split('\n')[0]}`;
}

export async function prepareDatasetPixels(d: CollectedDataset, o: PixelOptions): Promise<DatasetPixels> {
  const results: (PreparedImage | undefined)[] = new Array(d.images.length);
  const skipped: Unreadable[] = [...d.skipped];
  let done = 0, written = 0, reused = 0, next = 0;

  const one = async (im: CollectedImage): Promise<PreparedImage | Unreadable> => {
    let data: Buffer | undefined;
    let info;
    try {
      const st = await stat(im.source);
      info = o.manifest.lookup(im.source, st.size, st.mtimeMs);
      if (!info) {
        data = await readFile(im.source);
        info = { size: st.size, mtimeMs: st.mtimeMs, sha256: sha256(data), ...await orientedSize(data) };
      }
    } catch (err) {
      return { file: im.file, reason: reasonOf(err) };
    }
    const size = { width: info.width, height: info.height };
    if (size.width < o.divisibility || size.height < o.divisibility) {
      return { file: im.file, reason: `${size.width}x${size.height} px is smaller than this model's ${o.divisibility} px minimum side` };
    }
    const buckets = bucketsFor(size, o.resolutions, o.divisibility).map((bucket) => {
      const crop = centreCrop(size, bucket);
      const key = contentKey(info.sha256, bucket, crop);
      return { bucket, crop, key, image: join(o.preparedDir, `${key}_${bucket.width}x${bucket.height}.png`) };
    });
    const missing: Target[] = buckets.filter((b) => !isCompletePng(b.image, b.bucket)).map((b) => ({ bucket: b.bucket, crop: b.crop, file: b.image }));
    if (missing.length > 0) {
      try {
        data ??= await readFile(im.source);
        await renderTargets(data, missing, o.pngCompression);
      } catch (err) {
        return { file: im.file, reason: reasonOf(err) };
      }
    }
    written += missing.length;
    reused += buckets.length - missing.length;
    o.manifest.record(im.source, info);
    return { ...im, size, buckets };
  };

  const worker = async () => {
    while (next < d.images.length) {
      const index = next++;
      const r = await one(d.images[index]!);
      if ('reason' in r) skipped.push(r);
      else results[index] = r;
      done++;
      o.onImage?.(done, d.images.length, written, reused);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.concurrency) }, worker));
  const images = results.filter((r): r is PreparedImage => r !== undefined);
  skipped.sort((a, b) => a.file.localeCompare(b.file));
  if (images.length === 0) {
    throw new PrepareError(`no readable images in ${d.folder}: ${skipped.length} skipped (first: ${skipped[0]?.file}: ${skipped[0]?.reason})`);
  }
  return { images, skipped, written, reused };
}
