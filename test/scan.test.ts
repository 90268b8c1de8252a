import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { countMedia, parseMetadataJsonl, readCaption, scanDataset } from '../src/datasets/scan.js';
import { renderThumbnail } from '../src/datasets/thumbnail.js';
import { completePath } from '../src/util/complete.js';
import { makeDataset, tempDir } from './helpers/dataset.js';
import { makePng } from './helpers/png.js';

let dir: string;
beforeEach(() => { dir = tempDir('graft-scan-'); });
afterEach(() => { rmSync(dir, { recursive: true, force: true }); });

describe('scanDataset', () => {
  it('counts images, caption sources, missing captions, unreadable files and other files', async () => {
    makeDataset(dir, {
      images: [
        { name: 'a.png', width: 1200, height: 1200, caption: 'a red square' },
        { name: 'b.png', width: 900, height: 900, caption: 'alt', captionExt: 'caption' },
        { name: 'c.png', width: 640, height: 480, caption: 'json one', captionExt: 'json' },
        { name: 'd.png', width: 512, height: 512 },
      ],
      broken: ['broken.jpg'],
      extra: { 'notes.md': 'hello', 'clip.mp4': 'not decoded', 'empty.png': '' },
    });
    const r = await scanDataset(dir);
    expect(r.images).toBe(4);
    expect(r.videos).toBe(1);
    expect(r.captioned).toBe(3);
    expect(r.missingCaptions).toBe(2); // d.png and the clip
    expect(r.captionSources).toEqual({ txt: 1, caption: 1, json: 1 });
    expect(r.unreadable).toEqual([
      { file: 'broken.jpg', reason: 'not a readable image (unrecognised or damaged header)' },
      { file: 'empty.png', reason: 'empty file' },
    ]);
    expect(r.otherFiles).toBe(1);
    expect(r.items.find((i) => i.file === 'c.png')).toMatchObject({ width: 640, height: 480, caption: 'json' });
    expect(await readCaption(dir, r.items.find((i) => i.file === 'c.png')!)).toBe('json one');
    expect(await readCaption(dir, r.items.find((i) => i.file === 'a.png')!)).toBe('a red square');
    expect(await countMedia(dir)).toBe(7);
  });

  it('reads captions from metadata.jsonl and reports malformed lines by number', async () => {
    makeDataset(dir, { images: [{ name: 'x.png', width: 64, height: 64 }, { name: 'y.png', width: 64, height: 64 }] });
    writeFileSync(join(dir, 'metadata.jsonl'), '{"file_name": "x.png", "text": "from jsonl"}\n{not json}\n{"file_name": "y.png"}\n');
    const r = await scanDataset(dir);
    expect(r.captionSources).toEqual({ jsonl: 1 });
    expect(r.metadataErrors.map((e) => e.line)).toEqual([2, 3]);
    expect(r.metadataErrors[1]!.message).toBe('missing "text" (caption) for y.png');
    expect(await readCaption(dir, r.items[0]!)).toBe('from jsonl');
    expect(parseMetadataJsonl('\n\n').errors).toEqual([]);
  });

  it('says plainly when the folder is missing or has no images', async () => {
    await expect(scanDataset(join(dir, 'nope'))).rejects.toThrow(`dataset folder not found: ${join(dir, 'nope')}`);
    writeFileSync(join(dir, 'readme.txt'), 'x');
    await expect(scanDataset(dir)).rejects.toThrow(`no images found in ${dir}`);
  });

  it('reports files it may not read', async () => {
    if (process.getuid?.() === 0) {
      // root reads everything; check the reason text through a folder entry that is not a file instead
      mkdirSync(join(dir, 'folder.png'));
      makeDataset(dir, { images: [{ name: 'ok.png', width: 64, height: 64 }] });
      const r = await scanDataset(dir);
      expect(r.unreadable[0]).toMatchObject({ file: 'folder.png' });
      expect(r.unreadable[0]!.reason).toMatch(/^cannot (open|read): EISDIR/);
      return;
    }
    makeDataset(dir, { images: [{ name: 'ok.png', width: 64, height: 64 }, { name: 'locked.png', width: 64, height: 64 }] });
    chmodSync(join(dir, 'locked.png'), 0);
    const r = await scanDataset(dir);
    expect(r.unreadable).toEqual([{ file: 'locked.png', reason: 'cannot open: EACCES' }]);
  });

  it('scans 5,000 images with progress while the event loop keeps running', async () => {
    const png = makePng(96, 64);
    for (let i = 0; i < 5000; i++) {
      const name = `img_${String(i).padStart(4, '0')}`;
      writeFileSync(join(dir, `${name}.png`), png);
      if (i % 10 !== 0) writeFileSync(join(dir, `${name}.txt`), `caption ${i}`);
    }
    const progress: number[] = [];
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 5);
    const r = await scanDataset(dir, { onProgress: (p) => { progress.push(p.done); expect(p.total).toBe(5000); } });
    clearInterval(timer);
    expect(r.images).toBe(5000);
    expect(r.captioned).toBe(4500);
    expect(r.missingCaptions).toBe(500);
    // Progress arrives in steps (not only at the start and the end), and timers ran during the scan: the UI stays live.
    expect(progress[0]).toBe(0);
    expect(progress.at(-1)).toBe(5000);
    expect(progress.filter((d) => d > 0 && d < 5000).length).toBeGreaterThan(2);
    expect(ticks).toBeGreaterThan(5);
  });
});

describe('thumbnails', () => {
  it('draws half-block ANSI text (no native image protocol) at the requested size', async () => {
    // Colour support is detected from the terminal; tests have none, so ask for it as a terminal would have it.
    process.env.FORCE_COLOR = '1';
    writeFileSync(join(dir, 't.png'), makePng(32, 32, (x) => (x < 16 ? [255, 0, 0] : [0, 0, 255])));
    const text = await renderThumbnail(join(dir, 't.png'), 8, 4);
    expect(text).toContain('▄');
    expect(text).toContain('\u001B['); // ANSI colours
    expect(text).not.toContain('\u001B]1337'); // no iTerm inline image
    expect(text).not.toContain('\u001B_G'); // no kitty graphics
    const lines = text.split('\n').filter(Boolean);
    expect(lines.length).toBeLessThanOrEqual(4);
  });
});

describe('path completion', () => {
  it('completes a unique folder and lists candidates for a common prefix', () => {
    mkdirSync(join(dir, 'shapes_a'));
    mkdirSync(join(dir, 'shapes_b'));
    mkdirSync(join(dir, 'portraits'));
    writeFileSync(join(dir, 'shapes.yaml'), '');
    expect(completePath(join(dir, 'po'))).toEqual({ value: join(dir, 'portraits/'), candidates: [] });
    expect(completePath(join(dir, 'sh'))).toEqual({ value: join(dir, 'shapes_'), candidates: ['shapes_a/', 'shapes_b/'] });
    expect(completePath(join(dir, 'shapes.'), false)).toEqual({ value: join(dir, 'shapes.yaml'), candidates: [] });
    expect(completePath(join(dir, 'zzz'))).toEqual({ value: join(dir, 'zzz'), candidates: [] });
  });
});
