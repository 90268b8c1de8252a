import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { render } from 'ink-testing-library';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { App } from '../screens/App.js';
import { makeDataset, tempDir } from './helpers/dataset.js';
import { makePng } from './helpers/png.js';
import { flat, KEY, plain, press, settle, testEnv, waitFor, type Env } from './helpers/ink.js';

let env: Env;
let data: string;
beforeEach(() => {
  env = testEnv();
  data = tempDir('graft-ds-');
  makeDataset(join(data, 'shapes'), {
    images: [
      { name: 'a.png', width: 1200, height: 1200, caption: 'a red square on grey' },
      { name: 'b.png', width: 900, height: 900, caption: 'a blue circle' },
      { name: 'c.png', width: 1600, height: 900 },
    ],
    broken: ['broken.jpg'],
  });
});
afterEach(() => { env.cleanup(); rmSync(data, { recursive: true, force: true }); });

async function app(size = { columns: 80, rows: 24 }) {
  const r = render(<App store={env.store} presets={env.presets} gpus={[]} initialScreen="datasets" size={size} />);
  await settle();
  return r;
}

describe('Datasets screen', () => {
  it('adds a folder by path with completion, names it after the folder, and scans it', async () => {
    const r = await app();
    expect(r.lastFrame()).toMatch(/none yet: press a[\s\S]*to add a folder/); // wraps in the 20-column list
    await press(r, 'a', ...join(data, 'sha'), KEY.tab);
    expect(r.lastFrame()).toContain(`${join(data, 'shapes')}/`);
    await press(r, KEY.enter);
    expect(r.lastFrame()).toContain('Name for this dataset');
    expect(r.lastFrame()).toContain('shapes');
    await press(r, KEY.enter);
    const f = await waitFor(r.lastFrame, (x) => x.includes('Images 3'));
    expect(f).toContain('unreadable 1');
    expect(f).toContain('Captions 2 (txt 2)  missing 1');
    expect(f).toMatch(/1024x1024 █+ 1/);
    expect(f).toMatch(/1360x768 █+ 1/);
    expect(f).toMatch(/768x768 █+ 2/); // every bucket an image trains at: 1200x1200 and 900x900 both at 768
    expect(f).toMatch(/512x512 █+ 2/);
    expect(flat(f)).toContain('✗ broken.jpg: not a readable image');
    expect(env.store.listDatasets()).toEqual([expect.objectContaining({ name: 'shapes', folder: join(data, 'shapes'), is_reg: false })]);
    r.unmount();
  });

  it('changes the histogram buckets, marks regularization, and shows files with thumbnail and caption', async () => {
    env.store.addDataset('shapes', join(data, 'shapes'));
    const r = await app();
    await waitFor(r.lastFrame, (x) => x.includes('Images 3'));
    await press(r, 'b', KEY.ctrlU, ...'512', KEY.enter);
    const f = r.lastFrame()!;
    expect(f).toContain('Buckets (512, ÷16;');
    expect(f).toMatch(/512x512 █+ 2/);
    await press(r, 'g');
    expect(r.lastFrame()).toContain('(regularization)');
    expect(env.store.listDatasets()[0]!.is_reg).toBe(true);
    await press(r, 'f');
    const files = await waitFor(r.lastFrame, (x) => x.includes('a red square on grey'));
    expect(files).toContain('Files 1/3');
    expect(files).toContain('▄');
    await press(r, KEY.down, KEY.down);
    const third = await waitFor(r.lastFrame, (x) => x.includes('Files 3/3') && x.includes('(no caption)'));
    expect(third).toContain('!c.png 1600x900');
    await press(r, KEY.escape);
    expect(r.lastFrame()).toContain('Images 3');
    r.unmount();
  });

  it('lists items to look at: invisible characters, a caption that is not UTF-8, one longer than the text encoder reads, a picture smaller than every resolution', async () => {
    const odd = join(data, 'odd');
    makeDataset(odd, {
      images: [
        { name: 'hidden.png', width: 600, height: 600, caption: 'a\u200bstar' },
        { name: 'long.png', width: 600, height: 600, caption: 'x'.repeat(80) },
        { name: 'small.png', width: 100, height: 100, caption: 'small' },
        { name: 'latin1.png', width: 600, height: 600 },
      ],
    });
    writeFileSync(join(odd, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9]));
    env.store.addDataset('odd', odd);
    const r = await app({ columns: 140, rows: 40 });
    const f = flat(await waitFor(r.lastFrame, (x) => x.includes('items to look at')));
    expect(f).toContain('4 items to look at');
    // One line each in the summary (cut to the column); in full beside the file in the file view.
    for (const start of ['! hidden.png: invisible or direction', '! latin1.png: latin1.txt: not valid UTF-8', '! long.png: caption is 82 tokens', '! small.png: 100x100 px is smaller']) expect(f).toContain(start);
    await press(r, 'f');
    // Files in name order: hidden, latin1, long, small.
    const full = [
      '! invisible or direction characters: U+200B (zero-width space) at character 2',
      '! latin1.txt: not valid UTF-8 (byte 0xe9 at offset 3): save it as UTF-8',
      "! caption is 82 tokens; graft-tiny (built-in demo, CPU)'s text encoder reads 48: the rest is cut",
      '! 100x100 px is smaller than every resolution asked for (512, 768, 1024): it trains at its own size',
    ];
    for (const [i, text] of full.entries()) {
      if (i > 0) await press(r, KEY.down);
      await waitFor(r.lastFrame, (x) => flat(x).includes(text));
    }
    r.unmount();
  });

  it('refuses to name a folder that is not there or holds no pictures, at once', async () => {
    const r = await app();
    await press(r, 'a', ...join(data, 'nope'), KEY.enter);
    expect(flat(r.lastFrame())).toContain(`no such folder: ${join(data, 'nope')}: choose a folder of pictures`);
    mkdirSync(join(data, 'empty'));
    await press(r, KEY.ctrlU, ...join(data, 'empty'), KEY.enter);
    expect(flat(r.lastFrame())).toContain(`no images in ${join(data, 'empty')}`);
    expect(env.store.listDatasets()).toEqual([]);
    r.unmount();
  });

  it('shows a missing folder plainly and forgets a dataset only after a second x', async () => {
    env.store.addDataset('gone', join(data, 'nope'));
    const r = await app();
    await waitFor(r.lastFrame, (x) => x.includes('dataset folder not found'));
    await press(r, 'x');
    expect(flat(r.lastFrame())).toContain('press x again to forget "gone"');
    expect(env.store.listDatasets()).toHaveLength(1);
    await press(r, 'x');
    expect(env.store.listDatasets()).toHaveLength(0);
    r.unmount();
  });

  it('scanning 5,000 images draws a progress indicator that advances before the result', async () => {
    const big = join(data, 'big');
    mkdirSync(big);
    const png = makePng(64, 48);
    for (let i = 0; i < 5000; i++) writeFileSync(join(big, `i${i}.png`), png);
    env.store.addDataset('big', big);
    const r = await app();
    await waitFor(r.lastFrame, (x) => x.includes('Images 5000'), 60_000);
    const progress = r.frames.map(plain).filter((f) => /Scanning [\d,]+ \/ 5,000/.test(f));
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.some((f) => !f.includes('Scanning 0 / 5,000'))).toBe(true);
    r.unmount();
  });

  it('uses the extra room at 160x48: summary and thumbnail side by side', async () => {
    env.store.addDataset('shapes', join(data, 'shapes'));
    const r = await app({ columns: 160, rows: 48 });
    const f = await waitFor(r.lastFrame, (x) => x.includes('Images 3') && x.includes('a red square on grey'));
    expect(f).toContain('▄');
    r.unmount();
  });

  it('named datasets appear by name in the DATASETS panel of New Job, regularization carried over', async () => {
    env.store.addDataset('people reg', join(data, 'shapes'), true);
    const r = await app();
    await press(r, '2');
    await press(r, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.tab, KEY.enter);
    expect(r.lastFrame()).toContain('people reg');
    expect(r.lastFrame()).toContain('Type a path...');
    await press(r, KEY.enter);
    const f = r.lastFrame()!;
    expect(f).toContain(`people reg (${join(data, 'shapes')}`.slice(0, 30));
    expect(f).toMatch(/Is Regularization\s+\[x\]/);
    r.unmount();
  });
});
