// Scanning a dataset folder (SPEC.md section 5): what is in it, what the trainer can read, which captions exist.
// Reads only the first bytes of each image and yields to the event loop so a 5,000-image folder keeps the UI live.
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { imageDimensionsFromData } from 'image-dimensions';
import { captionProblems, decodeCaption } from './checks.js';

export const IMAGE_EXTS = ['.jpg', '.jpeg', '.png', '.webp'];
export const VIDEO_EXTS = ['.mp4', '.webm', '.mov', '.mkv', '.avi'];
export const CAPTION_EXTS = ['txt', 'caption', 'json'] as const;
export const METADATA_FILE = 'metadata.jsonl';

export type CaptionSource = 'txt' | 'caption' | 'json' | 'jsonl';

export interface ScanItem {
  file: string;
  kind: 'image' | 'video';
  width?: number;
  height?: number;
  caption?: CaptionSource;
  /** The caption as the trainer reads it (caption files and metadata.jsonl). */
  captionText?: string;
  /** What is wrong with its caption file or text (checks.ts): not UTF-8, invisible characters. */
  problems?: string[];
}

export interface Unreadable {
  file: string;
  reason: string;
}

export interface ScanResult {
  folder: string;
  items: ScanItem[];
  images: number;
  videos: number;
  captioned: number;
  missingCaptions: number;
  captionSources: Partial<Record<CaptionSource, number>>;
  unreadable: Unreadable[];
  metadataErrors: { line: number; message: string }[];
  otherFiles: number;
}

export interface ScanProgress {
  done: number;
  total: number;
}

export class ScanError extends Error {}

const HEADER_BYTES = 64 * 1024;
const MAX_HEADER_BYTES = 8 * 1024 * 1024;

async function readDimensions(file: string): Promise<{ width: number; height: number } | string> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    return `cannot open: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  try {
    const { size } = await handle.stat();
    if (size === 0) return 'empty file';
    // JPEGs may carry large EXIF blocks before the size marker: read more when the first chunk is not enough.
    for (let want = Math.min(size, HEADER_BYTES); ; want = Math.min(size, want * 8)) {
      const buf = Buffer.alloc(want);
      const { bytesRead } = await handle.read(buf, 0, want, 0);
      const dims = imageDimensionsFromData(new Uint8Array(buf.buffer, buf.byteOffset, bytesRead));
      if (dims && dims.width > 0 && dims.height > 0) return { width: dims.width, height: dims.height };
      if (want >= size || want >= MAX_HEADER_BYTES) return 'not a readable image (unrecognised or damaged header)';
    }
  } catch (err) {
    return `cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  } finally {
    await handle.close();
  }
}

/** Parse metadata.jsonl: {"file_name": "...", "text"|"caption"|"prompt": "..."} per line. */
export function parseMetadataJsonl(text: string): { captions: Map<string, string>; errors: { line: number; message: string }[] } {
  const captions = new Map<string, string>();
  const errors: { line: number; message: string }[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      errors.push({ line: i + 1, message: `not valid JSON: ${(err as Error).message}` });
      return;
    }
    const rec = obj as Record<string, unknown>;
    const file = rec?.file_name ?? rec?.file;
    const caption = rec?.text ?? rec?.caption ?? rec?.prompt;
    if (typeof file !== 'string') errors.push({ line: i + 1, message: 'missing "file_name"' });
    else if (typeof caption !== 'string') errors.push({ line: i + 1, message: `missing "text" (caption) for ${file}` });
    else captions.set(file, caption);
  });
  return { captions, errors };
}

export async function scanDataset(
  folder: string,
  opts: { onProgress?: (p: ScanProgress) => void; signal?: AbortSignal; concurrency?: number } = {},
): Promise<ScanResult> {
  let names: string[];
  try {
    const st = await stat(folder);
    if (!st.isDirectory()) throw new ScanError(`${folder} is not a folder`);
    names = (await readdir(folder)).sort();
  } catch (err) {
    if (err instanceof ScanError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new ScanError(code === 'ENOENT' ? `dataset folder not found: ${folder}` : `cannot read ${folder}: ${code ?? (err as Error).message}`);
  }
  const present = new Set(names);
  let metadata = { captions: new Map<string, string>(), errors: [] as { line: number; message: string }[] };
  if (present.has(METADATA_FILE)) metadata = parseMetadataJsonl(await readFile(join(folder, METADATA_FILE), 'utf8'));

  const media = names.filter((n) => { const e = extname(n).toLowerCase(); return IMAGE_EXTS.includes(e) || VIDEO_EXTS.includes(e); });
  const captionFiles = new Set(names.filter((n) => CAPTION_EXTS.some((e) => n.endsWith(`.${e}`))));
  const otherFiles = names.length - media.length - captionFiles.size - (present.has(METADATA_FILE) ? 1 : 0);
  if (media.length === 0) throw new ScanError(`no images found in ${folder}`);

  const items: ScanItem[] = new Array(media.length);
  const unreadable: Unreadable[] = [];
  let done = 0;
  let lastReport = 0;
  const report = (force = false) => {
    const now = Date.now();
    if (force || now - lastReport > 50) {
      lastReport = now;
      opts.onProgress?.({ done, total: media.length });
    }
  };
  report(true);

  let next = 0;
  const worker = async () => {
    while (next < media.length) {
      if (opts.signal?.aborted) throw new ScanError('scan cancelled');
      const index = next++;
      const file = media[index]!;
      const stem = file.slice(0, file.length - extname(file).length);
      const ext = extname(file).toLowerCase();
      const caption = CAPTION_EXTS.find((e) => present.has(`${stem}.${e}`)) ?? (metadata.captions.has(file) ? 'jsonl' : undefined);
      const item: ScanItem = { file, kind: IMAGE_EXTS.includes(ext) ? 'image' : 'video', ...(caption ? { caption } : {}) };
      if (caption) {
        const read = await readCaptionChecked(folder, item, metadata.captions);
        const problems = [...(read.problem ? [read.problem] : []), ...captionProblems(read.text)];
        Object.assign(item, { captionText: read.text }, problems.length ? { problems } : {});
      }
      if (item.kind === 'image') {
        const dims = await readDimensions(join(folder, file));
        if (typeof dims === 'string') unreadable.push({ file, reason: dims });
        else Object.assign(item, dims);
      }
      items[index] = item;
      done++;
      report();
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 16 }, worker));
  report(true);

  const readable = items.filter((it) => it.kind === 'video' || it.width !== undefined);
  const captionSources: Partial<Record<CaptionSource, number>> = {};
  for (const it of readable) if (it.caption) captionSources[it.caption] = (captionSources[it.caption] ?? 0) + 1;
  const captioned = readable.filter((it) => it.caption).length;
  unreadable.sort((a, b) => a.file.localeCompare(b.file));
  return {
    folder,
    items: readable,
    images: readable.filter((i) => i.kind === 'image').length,
    videos: readable.filter((i) => i.kind === 'video').length,
    captioned,
    missingCaptions: readable.length - captioned,
    captionSources,
    unreadable,
    metadataErrors: metadata.errors,
    otherFiles,
  };
}

/** The caption of one item and whether its file is valid UTF-8 (read during the scan). */
async function readCaptionChecked(folder: string, item: ScanItem, jsonl: Map<string, string>): Promise<{ text: string; problem?: string }> {
  if (item.caption === 'jsonl') return { text: jsonl.get(item.file) ?? '' };
  const stem = item.file.slice(0, item.file.length - extname(item.file).length);
  const name = `${stem}.${item.caption}`;
  try {
    const { text, problem } = decodeCaption(await readFile(join(folder, name)));
    if (item.caption !== 'json') return { text: text.trim(), problem: problem && `${name}: ${problem}` };
    try {
      const obj = JSON.parse(text) as Record<string, unknown>;
      const c = obj.caption ?? obj.text ?? obj.prompt;
      return typeof c === 'string' ? { text: c, problem: problem && `${name}: ${problem}` } : { text: '', problem: `${name}: no "caption" (or "text", "prompt") string` };
    } catch (err) {
      return { text: '', problem: `${name}: not valid JSON (${(err as Error).message})` };
    }
  } catch (err) {
    return { text: '', problem: `${name}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
}

/** The caption text of one item, as the trainer would read it (files on disk are never changed). */
export async function readCaption(folder: string, item: ScanItem): Promise<string | undefined> {
  const stem = item.file.slice(0, item.file.length - extname(item.file).length);
  switch (item.caption) {
    case 'txt':
    case 'caption':
      return (await readFile(join(folder, `${stem}.${item.caption}`), 'utf8')).trim();
    case 'json': {
      try {
        const obj = JSON.parse(await readFile(join(folder, `${stem}.json`), 'utf8')) as Record<string, unknown>;
        const c = obj.caption ?? obj.text ?? obj.prompt;
        return typeof c === 'string' ? c : JSON.stringify(obj);
      } catch (err) {
        return `(caption file is not valid JSON: ${(err as Error).message})`;
      }
    }
    case 'jsonl':
      return parseMetadataJsonl(await readFile(join(folder, METADATA_FILE), 'utf8')).captions.get(item.file);
    default:
      return undefined;
  }
}

/** Quick count of images and clips in a folder (no decoding), for the form's effective-batch warning. */
export async function countMedia(folder: string): Promise<number | undefined> {
  try {
    const names = await readdir(folder);
    return names.filter((n) => { const e = extname(n).toLowerCase(); return IMAGE_EXTS.includes(e) || VIDEO_EXTS.includes(e); }).length;
  } catch {
    return undefined;
  }
}
