// The tensor names of a safetensors checkpoint, read from its header alone (8 bytes of length, then JSON):
// enough to tell a layout or a variant (FLUX.1-dev's guidance embedding) without touching the weights.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { PrepareError } from './errors.js';

const MAX_HEADER = 100 * 1024 * 1024;

/** The names in one .safetensors file. */
export function safetensorsNames(file: string): string[] {
  const fd = openSync(file, 'r');
  try {
    const len = Buffer.alloc(8);
    if (readSync(fd, len, 0, 8, 0) !== 8) throw new PrepareError(`${file}: not a safetensors file (shorter than its 8-byte header length)`);
    const n = Number(len.readBigUInt64LE(0));
    if (n <= 0 || n > MAX_HEADER) throw new PrepareError(`${file}: not a safetensors file (header length ${n})`);
    const header = Buffer.alloc(n);
    if (readSync(fd, header, 0, n, 8) !== n) throw new PrepareError(`${file}: truncated safetensors header (${n} bytes announced)`);
    let parsed: unknown;
    try { parsed = JSON.parse(header.toString('utf8')); } catch { throw new PrepareError(`${file}: not a safetensors file (its header is not JSON)`); }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new PrepareError(`${file}: not a safetensors file (its header is not an object)`);
    return Object.keys(parsed).filter((k) => k !== '__metadata__');
  } finally {
    closeSync(fd);
  }
}

/**
 * The names of a diffusers/transformers component folder: its `<stem>.safetensors`, or the weight_map of
 * its `<stem>.safetensors.index.json` (sharded); undefined when it has neither.
 */
export function folderTensorNames(folder: string, stems: string[]): string[] | undefined {
  for (const stem of stems) {
    const single = join(folder, `${stem}.safetensors`);
    if (existsSync(single)) return safetensorsNames(single);
    const index = join(folder, `${stem}.safetensors.index.json`);
    if (existsSync(index)) {
      try {
        const map = (JSON.parse(readFileSync(index, 'utf8')) as { weight_map?: Record<string, unknown> }).weight_map;
        if (map && typeof map === 'object') return Object.keys(map);
      } catch { /* unreadable index: reported as missing weights */ }
      throw new PrepareError(`${index}: not a readable safetensors index (no weight_map)`);
    }
  }
  return undefined;
}
