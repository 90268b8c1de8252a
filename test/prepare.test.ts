// graft prepare end to end on small generated datasets: captions from every source, the trigger, repeats
// and flips, prepared PNGs at their bucket size, EXIF orientation, reuse on a second run, redoing only what
// changed, and each error of SPEC section 9.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PrepareError } from '../src/prepare/errors.js';
import { prepareJob, type PrepareSummary } from '../src/prepare/prepare.js';
import { tempDir, tinyJobYaml, writeImage } from './helpers/dataset.js';

let root: string;
let data: string;
beforeEach(() => {
  root = tempDir('graft-prepare-');
  data = join(root, 'data');
  mkdirSync(data);
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** Byte-level ids of the demo tokenizer (the rule of trainer-cuda/demo/text_encoder.cpp), padded to 48. */
const ids = (text: string) => {
  const out = [1, ...[...Buffer.from(text, 'utf8')].slice(0, 46).map((b) => b + 3), 2];
  while (out.length < 48) out.push(0);
  return out;
};

function config(o: Partial<Parameters<typeof tinyJobYaml>[0]> = {}): string {
  const file = join(root, 'job.yaml');
  writeFileSync(file, tinyJobYaml({ name: 'j', trainingFolder: join(root, 'out'), datasets: [{ folder_path: data }], trigger: 'zxq', ...o }));
  return file;
}

async function run(file: string): Promise<{ summary: PrepareSummary; job: any; lines: string[] }> {
  const lines: string[] = [];
  const summary = await prepareJob(file, { home: join(root, 'home'), log: (l) => lines.push(l), concurrency: 2 });
  return { summary, job: JSON.parse(readFileSync(summary.jobJson, 'utf8')), lines };
}

const jobDir = () => join(root, 'out', 'j');
const preparedFiles = () => readdirSync(join(jobDir(), 'prepared')).filter((f) => f.endsWith('.png')).sort();

describe('graft prepare', () => {
  it('reads captions from txt, caption, json, metadata.jsonl and default_caption, and puts the trigger in', async () => {
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'a red star\n');
    await writeImage(join(data, 'b.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'b.caption'), 'zxq on grass');
    await writeImage(join(data, 'c.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'c.json'), JSON.stringify({ caption: 'a [trigger] in space' }));
    await writeImage(join(data, 'd.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'metadata.jsonl'), '{"file_name": "d.png", "text": "from jsonl"}\n');
    await writeImage(join(data, 'e.png'), { width: 32, height: 32 });
    const { job, summary } = await run(config({ datasets: [{ folder_path: data, default_caption: 'a photo' }] }));
    const byFile = Object.fromEntries(job.datasets[0].items.map((it: any) => [it.source.split('/').pop(), it]));
    expect(byFile['a.png'].caption).toBe('zxq, a red star');
    expect(byFile['b.png'].caption).toBe('zxq on grass'); // already holds the trigger
    expect(byFile['c.png'].caption).toBe('a zxq in space');
    expect(byFile['d.png'].caption).toBe('zxq, from jsonl');
    expect(byFile['e.png'].caption).toBe('zxq, a photo');
    expect(byFile['a.png'].tokens).toEqual(ids('zxq, a red star'));
    expect(byFile['a.png'].dropout_tokens).toEqual(ids('zxq'));
    expect(job.text).toEqual({ max_len: 48, empty_tokens: ids('') });
    expect(summary.datasets[0]!.missingCaptions).toBe(1);
    expect(summary.datasets[0]!.missingCaptionsUse).toBe('default_caption "a photo"');
  });

  it('writes job.json per the contract: model files, settings, repeats and flips, sample prompts with tokens', async () => {
    await writeImage(join(data, 'a.png'), { width: 64, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'wide');
    const file = config({
      datasets: [{ folder_path: data, num_repeats: 3, flip_x: true, flip_y: true, network_weight: 2, caption_dropout_rate: 0.1 }],
      train: { steps: 7, lr_scheduler: 'cosine', skip_first_sample: true },
      sample: { samples: [{ prompt: '[trigger] at night', width: 48, seed: 5, network_multiplier: 0.5 }, { prompt: 'plain' }], walk_seed: true, seed: 10 },
    });
    const { job } = await run(file);
    expect(job.format).toBe('graft-job/2');
    expect(job.name).toBe('j');
    expect(job.output_dir).toBe(jobDir());
    expect(job.cache_dir).toBe(join(jobDir(), 'cache'));
    expect(job.model.arch).toBe('flux');
    for (const part of ['transformer', 'text_encoder', 'ae', 'tokenizer']) expect(existsSync(job.model[part]), part).toBe(true);
    expect(job.train).toMatchObject({ steps: 7, batch_size: 2, lr: 0.001, lr_scheduler: 'cosine', optimizer: 'adamw', cache_latents: true, unload_text_encoder: false });
    expect(job.network).toEqual({ type: 'lora', linear: 4, linear_alpha: 4 });
    const ds = job.datasets[0];
    expect(ds).toMatchObject({ folder: data, weight: 2, is_reg: false, caption_dropout_rate: 0.1 });
    // One bucket (64x32 at 32 px -> 44x20: area <= 32^2, sides multiples of 4), four flip variants.
    expect(ds.items.map((it: any) => [it.width, it.height, it.flip_x, it.flip_y, it.repeats])).toEqual([
      [44, 20, false, false, 3], [44, 20, true, false, 3], [44, 20, false, true, 3], [44, 20, true, true, 3],
    ]);
    expect(new Set(ds.items.map((it: any) => it.image)).size).toBe(1); // the trainer flips: one PNG
    expect(job.sample).toMatchObject({ skip_first_sample: true, walk_seed: true, seed: 10 });
    expect(job.sample.prompts).toEqual([
      { prompt: 'zxq at night', tokens: ids('zxq at night'), width: 48, height: 32, seed: 5, lora_scale: 0.5 },
      { prompt: 'plain', tokens: ids('plain'), width: 32, height: 32, seed: 11, lora_scale: 1 }, // walk_seed: seed + index
    ]);
    expect(job.config.datasets[0].num_repeats).toBe(3); // the process entry as written
  });

  it('passes LoKr, the optimizer and its settings, and the schedule parameters to job.json as set', async () => {
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    const file = config({
      train: { steps: 9, optimizer: 'prodigy', optimizer_params: { d_coef: 2, weight_decay: 0.01 }, lr: 1, lr_scheduler: 'cosine_with_restarts', lr_scheduler_params: { T_0: 3, T_mult: 2, eta_min: 0.1, other: 1 }, lr_warmup_steps: 2 },
      extra: { network: { type: 'lokr', linear: 8, linear_alpha: 8, lokr_factor: 4, lokr_full_rank: true }, model: { arch: 'graft_tiny', name_or_path: 'presets/graft-tiny', quantize: true, qtype: 'uint4', quantize_te: true, qtype_te: 'uint8', layer_offloading: true, layer_offloading_transformer_percent: 0.5 } },
    });
    const { job } = await run(file);
    expect([job.model.quantize, job.model.quantize_te, job.model.offload_transformer]).toEqual(['nf4', 'int8', 0.5]);
    expect(job.network).toEqual({ type: 'lokr', linear: 8, linear_alpha: 8, lokr_factor: 4, lokr_full_rank: true });
    expect(job.train).toMatchObject({ optimizer: 'prodigy', optimizer_params: { d_coef: 2, weight_decay: 0.01 }, lr: 1, lr_scheduler: 'cosine_with_restarts', lr_warmup_steps: 2 });
    expect(job.train.lr_scheduler_params).toEqual({ T_0: 3, T_mult: 2, eta_min: 0.1 }); // what the trainer reads
  });

  it('writes 8-bit RGB PNGs at exactly the bucket size: one per listed resolution, alpha on white, grey, 16-bit and CMYK converted', async () => {
    await writeImage(join(data, 'big.png'), { width: 96, height: 64 });
    await writeImage(join(data, 'alpha.png'), { width: 40, height: 40, left: [0, 0, 0, 0], right: [0, 0, 0, 0] });
    await writeImage(join(data, 'grey.png'), { width: 40, height: 40, grey: true });
    await sharp(join(data, 'grey.png')).toColourspace('rgb16').png().toFile(join(data, 'deep.png'));
    await sharp(join(data, 'big.png')).toColourspace('cmyk').jpeg().toFile(join(data, 'cmyk.jpg'));
    expect((await sharp(join(data, 'cmyk.jpg')).metadata()).space).toBe('cmyk');
    expect((await sharp(join(data, 'deep.png')).metadata()).depth).toBe('ushort');
    const { job } = await run(config({ datasets: [{ folder_path: data, resolution: [32, 64], default_caption: 'x' }] }));
    const items = job.datasets[0].items;
    const big = items.filter((it: any) => it.source.endsWith('big.png')).map((it: any) => `${it.width}x${it.height}`);
    expect(big).toEqual(['36x24', '76x52']); // 96x64 at 32 and at 64 (never upscaled)
    expect(items).toHaveLength(7);
    expect(items.filter((it: any) => it.source.endsWith('alpha.png')).map((it: any) => `${it.width}x${it.height}`)).toEqual(['32x32']);
    for (const it of items) {
      const meta = await sharp(join(jobDir(), it.image)).metadata();
      expect([meta.format, meta.width, meta.height, meta.channels, meta.depth, meta.hasAlpha]).toEqual(['png', it.width, it.height, 3, 'uchar', false]);
    }
    const alpha = items.find((it: any) => it.source.endsWith('alpha.png'));
    const { data: px } = await sharp(join(jobDir(), alpha.image)).raw().toBuffer({ resolveWithObject: true });
    expect([...px.subarray(0, 3)]).toEqual([255, 255, 255]); // transparent -> white
  });

  it('applies EXIF orientation: a JPEG with orientation 6 comes out rotated', async () => {
    // Drawn 64 wide x 32 high, red left and blue right; orientation 6 shows it turned 90 degrees clockwise:
    // 32 wide x 64 high, red on top.
    await writeImage(join(data, 'turned.jpg'), { width: 64, height: 32, format: 'jpeg', orientation: 6 });
    const { job } = await run(config({ datasets: [{ folder_path: data, default_caption: 'x' }] }));
    const it = job.datasets[0].items[0];
    expect([it.width, it.height]).toEqual([20, 44]);
    const { data: px, info } = await sharp(join(jobDir(), it.image)).raw().toBuffer({ resolveWithObject: true });
    const at = (x: number, y: number) => [...px.subarray((y * info.width + x) * 3, (y * info.width + x) * 3 + 3)];
    expect(at(8, 4)[0]).toBeGreaterThan(150); // top: red
    expect(at(8, 4)[2]).toBeLessThan(100);
    expect(at(8, 35)[2]).toBeGreaterThan(150); // bottom: blue
  });

  it('reuses everything on a second run, redoes only a changed image, and removes what no item uses', async () => {
    for (const [i, n] of ['a', 'b', 'c'].entries()) {
      await writeImage(join(data, `${n}.png`), { width: 48, height: 48, left: [i * 100, 0, 0] });
      writeFileSync(join(data, `${n}.txt`), n);
    }
    const first = await run(config());
    expect([first.summary.written, first.summary.reused]).toEqual([3, 0]);
    const before = Object.fromEntries(preparedFiles().map((f) => [f, statSync(join(jobDir(), 'prepared', f)).mtimeMs]));

    const second = await run(config());
    expect([second.summary.written, second.summary.reused, second.summary.removed]).toEqual([0, 3, 0]);
    for (const [f, mtime] of Object.entries(before)) expect(statSync(join(jobDir(), 'prepared', f)).mtimeMs).toBe(mtime);
    expect(second.job.datasets).toEqual(first.job.datasets);

    // b changes (other pixels, a later mtime); c is removed from the dataset.
    await writeImage(join(data, 'b.png'), { width: 48, height: 48, left: [0, 200, 0], right: [0, 200, 0] });
    utimesSync(join(data, 'b.png'), new Date(), new Date(Date.now() + 5000));
    rmSync(join(data, 'c.png'));
    const third = await run(config());
    expect([third.summary.written, third.summary.reused, third.summary.removed]).toEqual([1, 1, 2]);
    const after = preparedFiles();
    expect(after).toHaveLength(2);
    const aItem = third.job.datasets[0].items.find((it: any) => it.source.endsWith('a.png'));
    expect(statSync(join(jobDir(), aItem.image)).mtimeMs).toBe(before[aItem.image.split('/').pop()]);
    expect(readdirSync(join(jobDir(), 'prepared')).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('skips unreadable and too small files, lists them with reasons, and goes on', async () => {
    await writeImage(join(data, 'good.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'garbage.jpg'), 'not an image at all');
    const png = readFileSync(join(data, 'good.png'));
    writeFileSync(join(data, 'cut.png'), png.subarray(0, 60)); // header intact, pixels cut off
    await writeImage(join(data, 'tiny.png'), { width: 3, height: 40 });
    const { summary, job, lines } = await run(config({ datasets: [{ folder_path: data, default_caption: 'x' }] }));
    expect(job.datasets[0].items.map((it: any) => it.source.split('/').pop())).toEqual(['good.png']);
    const skipped = summary.datasets[0]!.skipped;
    expect(skipped.map((s) => s.file)).toEqual(['cut.png', 'garbage.jpg', 'tiny.png']);
    expect(skipped[0]!.reason).toMatch(/^cannot decode/);
    expect(skipped[1]!.reason).toContain('not a readable image');
    expect(skipped[2]!.reason).toBe("3x40 px is smaller than this model's 4 px minimum side");
    expect(lines).toContain('  3 files skipped:');
    expect(lines).toContain("    tiny.png: 3x40 px is smaller than this model's 4 px minimum side");
  });

  it('reports per item: invisible and direction characters, a caption file that is not UTF-8, a caption longer than the text encoder reads, a picture smaller than every resolution', async () => {
    for (const n of ['hidden', 'latin1', 'long', 'ok']) await writeImage(join(data, `${n}.png`), { width: 64, height: 64 });
    await writeImage(join(data, 'small.png'), { width: 20, height: 24 });
    writeFileSync(join(data, 'hidden.txt'), 'a red\u200b star \u202eevil');
    writeFileSync(join(data, 'latin1.txt'), Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x6e, 0x6f, 0x69, 0x72])); // "café noir" in Latin-1
    writeFileSync(join(data, 'long.txt'), 'a very long caption that goes on and on well past what the text encoder reads');
    writeFileSync(join(data, 'ok.txt'), 'a red star');
    writeFileSync(join(data, 'small.txt'), 'a red star');
    const { summary, lines } = await run(config({ datasets: [{ folder_path: data, resolution: [32, 48] }] }));
    expect(summary.datasets[0]!.problems.map((p) => p.file)).toEqual(['hidden.png', 'latin1.png', 'long.png', 'small.png']);
    expect(lines).toContain('  4 items to look at (they train, maybe not as meant):');
    expect(lines).toContain('    hidden.png: invisible or direction characters: U+200B (zero-width space) at character 11, U+202E (right-to-left override) at character 18');
    expect(lines).toContain('    latin1.png: latin1.txt: not valid UTF-8 (byte 0xe9 at offset 3): save it as UTF-8');
    expect(lines).toContain('    long.png: caption is 84 tokens; the text encoder reads 48: the rest is cut');
    expect(lines).toContain('    small.png: 20x24 px is smaller than every resolution asked for (32, 48): it trains at its own size');
  });

  it('says what is wrong, in one line, and leaves no job.json', async () => {
    const fails = async (file: string, message: string | RegExp) => {
      const err = await prepareJob(file, { home: join(root, 'home') }).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(PrepareError);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain('\n');
      expect(existsSync(join(jobDir(), 'job.json'))).toBe(false);
    };
    await fails(config({ datasets: [{ folder_path: join(root, 'nope') }] }), `dataset folder not found: ${join(root, 'nope')}`);
    await fails(config(), `no images found in ${data}`);
    writeFileSync(join(data, 'clip.mp4'), 'video');
    await fails(config(), `no images found in ${data}: it holds 1 video, and video datasets are not prepared yet`);
    rmSync(join(data, 'clip.mp4'));

    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'metadata.jsonl'), '{"file_name": "a.png", "text": "ok"}\n\n{"file_name": "b.png", "text": broken}\n');
    await fails(config(), `${join(data, 'metadata.jsonl')} line 3: not valid JSON`);
    rmSync(join(data, 'metadata.jsonl'));

    // No caption anywhere, no default_caption, no trigger: nothing to learn from.
    await fails(config({ trigger: '' }), `no captions in ${data}: none of its 1 images has a caption file (.txt)`);
    writeFileSync(join(data, 'a.json'), '{"caption": ');
    await fails(config({ datasets: [{ folder_path: data, caption_ext: 'json' }] }), `${join(data, 'a.json')}: caption file is not valid JSON`);
    rmSync(join(data, 'a.json'));

    writeFileSync(join(data, 'bad.png'), 'x');
    await fails(config({ datasets: [{ folder_path: join(data, 'bad.png') }] }), 'is not a folder');

    const qwen = join(root, 'qwen_image.yaml');
    writeFileSync(qwen, readFileSync(config(), 'utf8').replace('"arch": "graft_tiny"', '"arch": "qwen_image"').replace('"presets/graft-tiny"', '"Qwen/Qwen-Image"'));
    await fails(qwen, /not supported yet: Qwen-Image: graft's trainer cannot train this family yet/);

    const invalid = join(root, 'invalid.yaml');
    writeFileSync(invalid, readFileSync(config(), 'utf8').replace('"lr": 0.001', '"lr": "fast"'));
    await fails(invalid, /train\.lr: must be a number/);
  });

  it('missing captions with a trigger train on the trigger alone; regularization datasets get no trigger', async () => {
    const reg = join(root, 'reg');
    mkdirSync(reg);
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    await writeImage(join(reg, 'r.png'), { width: 32, height: 32 });
    writeFileSync(join(reg, 'r.txt'), 'a [trigger]-free photo of a dog');
    const { job, lines } = await run(config({ datasets: [{ folder_path: data }, { folder_path: reg, is_reg: true }] }));
    const [mine, regs] = job.datasets;
    expect(mine.items[0]).toMatchObject({ caption: 'zxq', tokens: ids('zxq'), dropout_tokens: ids('zxq') });
    expect(regs.is_reg).toBe(true);
    expect(regs.items[0]).toMatchObject({ caption: 'a zxq-free photo of a dog', dropout_tokens: ids('') });
    expect(lines).toContain('  1 image without a caption: trained on the trigger word "zxq" alone');
  });

  it('unload_text_encoder trains every caption as the trigger alone; DOP adds the class prompt', async () => {
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'zxq wearing a hat');
    const unload = await run(config({ train: { unload_text_encoder: true } }));
    expect(unload.job.datasets[0].items[0]).toMatchObject({ caption: 'zxq', tokens: ids('zxq') });
    expect(unload.job.train.unload_text_encoder).toBe(true);
    const dop = await run(config({ train: { diff_output_preservation: true, diff_output_preservation_class: 'man' } }));
    expect(dop.job.datasets[0].items[0]).toMatchObject({ caption: 'zxq wearing a hat', dop_tokens: ids('man wearing a hat') });
    expect(dop.job.train).toMatchObject({ diff_output_preservation: true, diff_output_preservation_multiplier: 1, diff_output_preservation_class: 'man' });
  });

  it('passes EMA, differential guidance, blank prompt preservation and the timestep rule to the trainer', async () => {
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    writeFileSync(join(data, 'a.txt'), 'zxq');
    const on = await run(config({ train: {
      ema_config: { use_ema: true, ema_decay: 0.95 }, do_differential_guidance: true, differential_guidance_scale: 2,
      blank_prompt_preservation: true, blank_prompt_preservation_multiplier: 0.5, timestep_type: 'weighted', content_or_style: 'content',
    } }));
    expect(on.job.train).toMatchObject({
      timestep_type: 'weighted', content_or_style: 'content',
      ema_config: { use_ema: true, ema_decay: 0.95 }, do_differential_guidance: true, differential_guidance_scale: 2,
      blank_prompt_preservation: true, blank_prompt_preservation_multiplier: 0.5,
    });
    const off = await run(config({ train: { ema_config: { use_ema: false, ema_decay: 0.95 }, do_differential_guidance: false } }));
    expect(off.job.train.content_or_style).toBe('balanced');
    for (const key of ['ema_config', 'do_differential_guidance', 'blank_prompt_preservation', 'diff_output_preservation']) {
      expect(off.job.train).not.toHaveProperty(key);
    }
  });

  it('copies a config kept elsewhere into its job folder, updates that copy, and never overwrites a config the user put there', async () => {
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    const file = config({ datasets: [{ folder_path: 'data', default_caption: 'x' }] }); // relative to the config
    const { summary } = await run(file);
    expect(summary.configPath).toBe(join(jobDir(), 'config.yaml'));
    const copy = readFileSync(summary.configPath, 'utf8');
    expect(copy).toContain(`folder_path: ${data}`);
    expect(copy.split('\n')[0]).toBe(`# graft: copied from ${file} (edit that file: graft prepare and graft queue add update this copy)`);
    // The job folder itself prepares from its copy.
    const again = await prepareJob(jobDir(), { home: join(root, 'home') });
    expect(again.reused).toBe(1);
    // An edited original updates the copy.
    writeFileSync(file, readFileSync(file, 'utf8').replace('"steps": 4', '"steps": 9'));
    expect((await run(file)).job.train.steps).toBe(9);
    expect(readFileSync(summary.configPath, 'utf8')).toContain('steps: 9');
    // A config.yaml the user wrote there is theirs.
    writeFileSync(summary.configPath, copy.split('\n').slice(1).join('\n'));
    await expect(prepareJob(file, { home: join(root, 'home') })).rejects.toThrow(`${summary.configPath} already exists and is not a copy of ${file}`);
  });
});
