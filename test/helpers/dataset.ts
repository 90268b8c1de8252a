// Builds dataset folders for tests: images of given sizes, captions, a broken file.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makePng } from './png.js';

export function tempDir(prefix = 'graft-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface DatasetSpec {
  images: { name: string; width: number; height: number; caption?: string; captionExt?: 'txt' | 'caption' | 'json' }[];
  broken?: string[];
  extra?: Record<string, string>;
}

export function makeDataset(dir: string, spec: DatasetSpec): string {
  mkdirSync(dir, { recursive: true });
  for (const img of spec.images) {
    writeFileSync(join(dir, img.name), makePng(img.width, img.height, (x, y) => [(x * 7) % 256, (y * 5) % 256, 120]));
    if (img.caption !== undefined) {
      const stem = img.name.replace(/\.[^.]+$/, '');
      const ext = img.captionExt ?? 'txt';
      writeFileSync(join(dir, `${stem}.${ext}`), ext === 'json' ? JSON.stringify({ caption: img.caption }) : img.caption);
    }
  }
  for (const b of spec.broken ?? []) writeFileSync(join(dir, b), 'this is not an image');
  for (const [name, text] of Object.entries(spec.extra ?? {})) writeFileSync(join(dir, name), text);
  return dir;
}
