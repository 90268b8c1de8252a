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

export interface ImageSpec {
  width: number;
  height: number;
  format?: 'png' | 'jpeg' | 'webp';
  /** EXIF orientation written into the file (JPEG): the pixels stay as drawn, viewers rotate them. */
  orientation?: number;
  /** Colour of the left half and of the right half (RGBA, 0-255). */
  left?: [number, number, number, number?];
  right?: [number, number, number, number?];
  grey?: boolean;
}

/** An image file drawn with sharp: two halves of given colours, optionally with alpha, grey or an EXIF orientation. */
export async function writeImage(file: string, spec: ImageSpec): Promise<void> {
  const { default: sharp } = await import('sharp');
  const left = spec.left ?? [220, 30, 30, 255];
  const right = spec.right ?? [30, 30, 220, 255];
  const alpha = left[3] !== undefined && left[3] !== 255 || right[3] !== undefined && right[3] !== 255;
  const px = Buffer.alloc(spec.width * spec.height * 4);
  for (let y = 0; y < spec.height; y++) {
    for (let x = 0; x < spec.width; x++) {
      const c = x < spec.width / 2 ? left : right;
      px.set([c[0], c[1], c[2], c[3] ?? 255], (y * spec.width + x) * 4);
    }
  }
  let img = sharp(px, { raw: { width: spec.width, height: spec.height, channels: 4 } });
  if (!alpha) img = img.removeAlpha();
  if (spec.grey) img = img.toColourspace('b-w');
  if (spec.orientation) img = img.withMetadata({ orientation: spec.orientation });
  const format = spec.format ?? 'png';
  await (format === 'jpeg' ? img.jpeg({ quality: 95 }) : format === 'webp' ? img.webp({ lossless: true }) : img.png()).toFile(file);
}

/** Noise (or a gradient with noise), so encoded sizes are like photographs': for benchmarks. */
export async function writeNoiseImage(file: string, width: number, height: number, seed: number, format: 'png' | 'jpeg' = 'jpeg'): Promise<void> {
  const { default: sharp } = await import('sharp');
  const px = Buffer.alloc(width * height * 3);
  let s = seed >>> 0 || 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
      const n = (s >>> 0) % 64;
      const i = (y * width + x) * 3;
      px[i] = ((x * 255) / width + n) & 255;
      px[i + 1] = ((y * 255) / height + n) & 255;
      px[i + 2] = (((x + y) * 127) / width + n) & 255;
    }
  }
  const img = sharp(px, { raw: { width, height, channels: 3 } });
  await (format === 'jpeg' ? img.jpeg({ quality: 90 }) : img.png()).toFile(file);
}

/** A graft_tiny job config (the built-in demo model) for a dataset folder, as YAML text. */
export function tinyJobYaml(o: {
  name: string;
  trainingFolder: string;
  datasets: Record<string, unknown>[];
  trigger?: string;
  train?: Record<string, unknown>;
  sample?: Record<string, unknown>;
  extra?: Record<string, unknown>;
}): string {
  const process = {
    type: 'diffusion_trainer',
    training_folder: o.trainingFolder,
    device: 'cpu',
    ...(o.trigger !== undefined ? { trigger_word: o.trigger } : {}),
    network: { type: 'lora', linear: 4, linear_alpha: 4 },
    save: { dtype: 'bf16', save_every: 1000, max_step_saves_to_keep: 1 },
    datasets: o.datasets.map((d) => ({ resolution: [32], caption_ext: 'txt', ...d })),
    train: { steps: 4, batch_size: 2, lr: 0.001, optimizer: 'adamw', ...o.train },
    model: { arch: 'graft_tiny', name_or_path: 'presets/graft-tiny', quantize: false, quantize_te: false },
    sample: { sample_every: 1000, width: 32, height: 32, sample_steps: 2, prompts: ['[trigger] on a beach'], ...o.sample },
    ...o.extra,
  };
  return JSON.stringify({ job: 'extension', config: { name: o.name, process: [process] }, meta: { name: '[name]', version: '1.0' } }, null, 2);
}
