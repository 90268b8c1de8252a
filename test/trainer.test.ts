// End-to-end checks of the compiled trainer (trainer-cuda/build/graft-trainer) on the tiny model:
// training lowers the loss, SIGINT saves and a resumed run continues exactly, bad input is refused
// with one clear line and nothing written over.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { dump, load } from 'js-yaml';
import { afterAll, describe, expect, it } from 'vitest';

const TRAINER = process.env.GRAFT_TRAINER ?? resolve('trainer-cuda/build/graft-trainer');
const temps: string[] = [];
afterAll(() => temps.forEach((d) => rmSync(d, { recursive: true, force: true })));

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'graft-trainer-'));
  temps.push(d);
  return d;
}

function trainer(args: string[]) {
  return spawnSync(TRAINER, args, { encoding: 'utf8', timeout: 120_000 });
}

interface Event { event: string; step?: number; loss?: number; status?: string; file?: string; message?: string }

function events(dir: string): Event[] {
  return readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Event);
}

function losses(dir: string): Map<number, number> {
  return new Map(events(dir).filter((e) => e.event === 'step').map((e) => [e.step!, e.loss!]));
}

/** A tiny job with its training settings changed (steps, saves, ...). */
function tinyJob(edit: (job: any) => void = () => {}): string {
  const dir = tempDir();
  const made = trainer(['make-tiny', dir, '--seed', '3']);
  expect(made.status, made.stderr).toBe(0);
  const job = JSON.parse(readFileSync(join(dir, 'job.json'), 'utf8'));
  edit(job);
  writeFileSync(join(dir, 'job.json'), JSON.stringify(job, null, 2));
  return dir;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

describe('graft-trainer', () => {
  it('prints its version', () => {
    const r = trainer(['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^graft-trainer \d+\.\d+\.\d+/);
  });

  it('benchmarks a LoRA step of the tiny model and of the demo model at both latent sizes', () => {
    const r = trainer(['bench', '--steps', '1']);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.length).toBe(3);
    expect(lines[0]).toMatch(/^bench cpu tiny-flux .* [\d.]+ ms\/step/);
    expect(lines[1]).toMatch(/^bench cpu demo model \(hidden 128, 2\+4 blocks, batch 4, 16 img \+ 48 txt tokens.* [\d.]+ ms\/step/);
    expect(lines[2]).toMatch(/64 img \+ 48 txt tokens.* [\d.]+ ms\/step/);
  });

  it('trains a LoRA on the tiny model: the loss falls, checkpoints rotate, the LoRA file has diffusers names', () => {
    const dir = tinyJob();
    const r = trainer(['train', dir]);
    expect(r.status, r.stderr).toBe(0);
    const ev = events(dir);
    expect(ev[0].event).toBe('start');
    expect(ev.at(-1)).toMatchObject({ event: 'end', status: 'finished', step: 300 });
    const l = [...losses(dir).values()];
    expect(l).toHaveLength(300);
    const first = mean(l.slice(0, 10));
    const last = mean(l.slice(-10));
    const drop = 1 - last / first;
    console.log(`tiny LoRA: loss ${first.toFixed(3)} -> ${last.toFixed(3)} (drop ${(100 * drop).toFixed(1)}%)`);
    // The target noise - x0 has a part a LoRA can learn here (which picture goes with which text:
    // x0) and a part it can only get by learning to denoise (the fresh unit-variance noise, loss 1.0
    // per element for a model that knows x0 exactly but ignores x_t). A random base model does not
    // denoise, so the LoRA must end near or below that floor, having learnt the whole caption->image map.
    expect(drop).toBeGreaterThan(0.5);
    expect(last).toBeLessThan(1.1);
    // save_every 100, keep 2: steps 100 and 200 kept (300 is the final file).
    const files = readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
    expect(files).toEqual(['tiny.safetensors', 'tiny_000000100.safetensors', 'tiny_000000200.safetensors']);
    const header = readSafetensorsHeader(join(dir, 'tiny.safetensors'));
    expect(header['transformer.transformer_blocks.0.attn.to_q.lora_A.weight'].shape).toEqual([16, 64]);
    expect(header['transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight'].shape).toEqual([256, 16]);
    const meta = header.__metadata__ as Record<string, string>;
    expect(JSON.parse(meta.training_info)).toEqual({ step: 300, epoch: 150 });
    expect(JSON.parse(meta.software).name).toBe('graft');
    expect(meta.base_model).toBe('graft/tiny-random-flux');
  });

  // Every optimizer (its state saved with the checkpoint) and LoKr.
  it.each([
    ['adamw', 'lora', 1e-3], ['adamw8bit', 'lora', 1e-3], ['lion', 'lora', 3e-4], ['adafactor', 'lora', 1e-3],
    ['prodigy', 'lora', 1], ['adamw', 'lokr', 1e-3],
  ] as const)('stops on SIGINT with a checkpoint, and the resumed run matches an uninterrupted one exactly (%s, %s)', async (optimizer, network, lr) => {
    const edit = (j: any) => {
      j.train.steps = 60;
      j.save.save_every = 1000;
      j.train.optimizer = optimizer;
      j.train.optimizer_params = {};
      j.train.lr = lr;
      j.network.type = network;
    };
    const whole = tinyJob(edit);
    expect(trainer(['train', whole]).status).toBe(0);

    const cut = tinyJob(edit);
    const child = spawn(TRAINER, ['train', cut], { stdio: 'ignore' });
    const code: number = await new Promise((done) => {
      const poll = setInterval(() => {
        if (existsSync(join(cut, 'metrics.jsonl')) && events(cut).some((e) => e.event === 'step' && e.step! >= 20)) {
          clearInterval(poll);
          child.kill('SIGINT');
        }
      }, 20);
      child.on('exit', (c) => { clearInterval(poll); done(c ?? -1); });
    });
    expect(code).toBe(130);
    const stopped = events(cut).at(-1)!;
    expect(stopped).toMatchObject({ event: 'end', status: 'stopped' });
    const k = stopped.step!;
    expect(k).toBeGreaterThanOrEqual(20);
    expect(k).toBeLessThan(60);
    expect(existsSync(join(cut, `tiny_${String(k).padStart(9, '0')}.safetensors`))).toBe(true);

    const resumed = trainer(['train', cut]);
    expect(resumed.status, resumed.stderr).toBe(0);
    expect(resumed.stdout).toContain(`resuming 'tiny' on cpu`);
    const a = losses(whole);
    const b = losses(cut);
    for (let s = 1; s <= 60; s++) expect(b.get(s), `step ${s}`).toBe(a.get(s));
    // The final LoRA files are identical byte for byte apart from nothing: same weights, same metadata.
    expect(readFileSync(join(cut, 'tiny.safetensors')).equals(readFileSync(join(whole, 'tiny.safetensors')))).toBe(true);
  });

  it('trains every stage of the demo model (smoke run) and samples a picture from it', () => {
    const dir = join(tempDir(), 'demo');
    const made = trainer(['demo-model', dir, '--quick']);
    expect(made.status, made.stderr).toBe(0);
    expect(made.stdout).toMatch(/autoencoder step 4\/4/);
    expect(made.stdout).toMatch(/transformer step 4\/4/);
    for (const f of ['ae.safetensors', 'text_encoder.safetensors', 'transformer.safetensors', 'model.json'])
      expect(existsSync(join(dir, f)), f).toBe(true);
    const png = join(dir, 'sheet.png');
    const r = trainer(['sample', dir, '--out', png, '--prompt', 'a red circle on a blue background', '--prompt', '', '--steps', '3']);
    expect(r.status, r.stderr).toBe(0);
    const buf = readFileSync(png);
    expect(buf.subarray(1, 4).toString()).toBe('PNG');
    // Two 32x32 pictures side by side with 1-pixel gaps: 67 x 34.
    expect([buf.readUInt32BE(16), buf.readUInt32BE(20)]).toEqual([67, 34]);
    const bad = trainer(['sample', join(dir, 'nope'), '--out', png]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('model.json');

    // Fine-tuning the decoder alone changes every decoder weight and leaves the encoder (and so the
    // transformer's latent space) bit for bit as it was; model.json records the run.
    const aeBefore = tensorBytes(join(dir, 'ae.safetensors'));
    const tuned = trainer(['demo-model', dir, '--quick', '--resume', '--decoder-steps', '3', '--dit-steps', '0']);
    expect(tuned.status, tuned.stderr).toBe(0);
    expect(tuned.stdout).toMatch(/decoder step 3\/3/);
    expect(tuned.stdout).not.toMatch(/transformer step/);
    const aeAfter = tensorBytes(join(dir, 'ae.safetensors'));
    expect([...aeAfter.keys()].sort()).toEqual([...aeBefore.keys()].sort());
    for (const [name, bytes] of aeBefore) {
      if (name.startsWith('encoder.')) expect(aeAfter.get(name)!.equals(bytes), name).toBe(true);
      else if (name.startsWith('decoder.')) expect(aeAfter.get(name)!.equals(bytes), name).toBe(false);
    }
    const runs = JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8')).training;
    expect(runs.length).toBe(2);
    expect(runs[1].decoder.steps).toBe(3);
    expect(runs[1].transformer).toBeUndefined();
    // More transformer steps with the word contrast (shape and count words) and made-up shape words:
    // the log shows the gaps, model.json the settings.
    const contrast = trainer(['demo-model', dir, '--quick', '--resume', '--shape-contrast', '0.5', '--contrast-margin', '0.03', '--count-contrast', '0.5', '--novel-words', '0.25']);
    expect(contrast.status, contrast.stderr).toBe(0);
    expect(contrast.stdout).toMatch(/transformer step 4\/4 .*wrong-shape gap -?\d.* wrong-count gap -?\d/);
    const last = JSON.parse(readFileSync(join(dir, 'model.json'), 'utf8')).training.at(-1).transformer;
    expect([last.shape_contrast, last.contrast_margin, last.count_contrast, last.novel_words]).toEqual([0.5, expect.closeTo(0.03, 6), 0.5, 0.25]);
    expect(typeof last.final_wrong_shape_gap).toBe('number');
    expect(typeof last.final_wrong_count_gap).toBe('number');
    const badShare = trainer(['demo-model', dir, '--quick', '--resume', '--novel-words', '1.5']);
    expect(badShare.status).toBe(1);
    expect(badShare.stderr).toContain('--novel-words 1.5');
    // The base-model measure runs on any model folder; what it reads back is checked in test_shapes.cpp.
    const evald = trainer(['demo-model-eval', dir, '--seeds', '1', '--steps', '2']);
    expect(evald.status, evald.stderr).toBe(0);
    const measured = JSON.parse(evald.stdout.trim().split('\n').pop()!);
    expect(measured.samples).toBe(20);
    expect(measured.counts.samples).toBe(25);
    expect(Object.keys(measured.small.per_shape).sort()).toEqual(['circle', 'cross', 'diamond', 'square', 'triangle']);
    for (const v of [measured.shape, measured.colour, measured.background, ...Object.values<number>(measured.per_shape), measured.autoencoder.small, measured.autoencoder.large, measured.small.shape, ...Object.values<number>(measured.small.per_shape), measured.counts.right, measured.counts.drawn])
      expect(v >= 0 && v <= 1, JSON.stringify(measured)).toBe(true);
    const noResume = trainer(['demo-model', dir, '--decoder-steps', '3']);
    expect(noResume.status).toBe(1);
    expect(noResume.stderr).toContain('--resume');
    expect(made.stdout).toContain('latents 16x16: 64 image tokens of 4x4 pixels');

    // The shipped recipe's last stage: a factor-2 autoencoder takes over the text encoder and transformer
    // of a model trained on a factor-4 one; model.json keeps that model's runs.
    const coarse = join(tempDir(), 'coarse');
    const made4 = trainer(['demo-model', coarse, '--quick', '--latent-factor', '4']);
    expect(made4.status, made4.stderr).toBe(0);
    expect(made4.stdout).toContain('latents 8x8: 16 image tokens of 8x8 pixels');
    const fine = join(tempDir(), 'fine');
    expect(trainer(['demo-model', fine, '--quick', '--dit-steps', '0']).status).toBe(0);
    const noFrom = trainer(['demo-model', fine, '--quick', '--transformer-from', coarse]);
    expect(noFrom.status).toBe(1);
    expect(noFrom.stderr).toContain('add --resume');
    // --stop-at ends the run where a stopped run would have, and model.json says so.
    const carried = trainer(['demo-model', fine, '--quick', '--resume', '--transformer-from', coarse, '--dit-steps', '6', '--stop-at', '4']);
    expect(carried.status, carried.stderr).toBe(0);
    expect(carried.stdout).toContain('latents 16x16');
    expect(carried.stdout).toMatch(/transformer step 4\/6/);
    expect(carried.stdout).not.toMatch(/transformer step [56]\/6/);
    const coarseRuns = JSON.parse(readFileSync(join(coarse, 'model.json'), 'utf8')).training;
    const fineRuns = JSON.parse(readFileSync(join(fine, 'model.json'), 'utf8')).training;
    expect(fineRuns.length).toBe(2);
    expect(fineRuns[0].autoencoder.steps).toBe(4);
    expect(fineRuns[1].transformer_from).toEqual({ dir: coarse, training: coarseRuns });
    expect([fineRuns[1].transformer.steps, fineRuns[1].transformer.stopped_at]).toEqual([6, 4]);
    const before = tensorBytes(join(coarse, 'transformer.safetensors'));
    const after = tensorBytes(join(fine, 'transformer.safetensors'));
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    expect(after.get('img_in.weight')!.equals(before.get('img_in.weight')!)).toBe(false);

    // The demo LoRA job on that model: its dataset files and config.yaml, prepared by graft, then trained
    // with samples during training.
    const job = join(tempDir(), 'job');
    // The byte-level tokenizer is the same for every graft-tiny text encoder; demo-model writes weights only.
    copyFileSync(resolve('presets/graft-tiny/tokenizer.json'), join(dir, 'tokenizer.json'));
    expect(trainer(['demo-job', dir, job, '--steps', '4']).status).toBe(0);
    expect(readFileSync(join(job, 'dataset/0000.txt'), 'utf8')).toMatch(/zxq/);
    expect(readFileSync(join(job, 'dataset_reg/0000.txt'), 'utf8')).not.toMatch(/zxq/);
    // Its colour pairs: every colour of the palette two or three times as the bar's colour and as the
    // background, none of the pairs demo-eval asks for, and no pair twice.
    const pairs = Array.from({ length: 20 }, (_, i) => {
      const caption = readFileSync(join(job, `dataset/${String(i).padStart(4, '0')}.txt`), 'utf8');
      const m = caption.match(/^(?:a|two|three) (?:large|small) (\w+) zxqs? on an? (\w+) background\n$/);
      expect(m, caption).not.toBeNull();
      return [m![1], m![2]];
    });
    const tally = (words: string[]) => [...new Set(words)].map((w) => words.filter((x) => x === w).length).sort();
    expect(tally(pairs.map((p) => p[0]))).toEqual([2, 2, 2, 2, 3, 3, 3, 3]);
    expect(tally(pairs.map((p) => p[1]))).toEqual([2, 2, 2, 2, 3, 3, 3, 3]);
    const joined = pairs.map((p) => p.join('/'));
    expect(new Set(joined).size).toBe(20);
    for (const asked of ['red/white', 'blue/yellow', 'green/black']) expect(joined).not.toContain(asked);
    // The ADVANCED and timestep options as the TUI writes them reach the trainer through preparation.
    const yaml = load(readFileSync(join(job, 'config.yaml'), 'utf8')) as any;
    Object.assign(yaml.config.process[0].train, {
      ema_config: { use_ema: true, ema_decay: 0.9 }, do_differential_guidance: true, differential_guidance_scale: 2,
      diff_output_preservation: true, diff_output_preservation_class: 'square', timestep_type: 'weighted', content_or_style: 'content',
    });
    writeFileSync(join(job, 'config.yaml'), dump(yaml));
    const prep = spawnSync(process.execPath, [resolve('dist/src/cli.js'), 'prepare', join(job, 'config.yaml')], { encoding: 'utf8' });
    expect(prep.status, prep.stderr).toBe(0);
    const config = JSON.parse(readFileSync(join(job, 'job.json'), 'utf8'));
    expect(config.datasets.map((d: { is_reg: boolean; items: unknown[] }) => [d.is_reg, d.items.length])).toEqual([[false, 20], [true, 40]]);
    config.sample.sample_every = 2;
    config.sample.sample_steps = 2;
    writeFileSync(join(job, 'job.json'), JSON.stringify(config));
    const run = trainer(['train', job]);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toContain('advanced: EMA decay 0.9; differential guidance scale 2; DOP multiplier 1');
    const steps = events(job).filter((e) => e.event === 'step') as any[];
    expect(steps.map((e) => e.preservation_loss > 0)).toEqual([false, true, true, true]); // 0 while the adapter is the base model
    const samples = events(job).filter((e) => e.event === 'sample') as any[];
    expect(samples.map((e) => e.step)).toEqual([0, 2, 4]);
    expect(samples[2].files).toEqual([0, 1, 2].map((i) => join(job, `samples/000000004_${i}.png`)));
    for (const f of samples.flatMap((e) => e.files)) expect(existsSync(f), f).toBe(true);
  });

  describe('refuses bad input with one line naming the file, writing nothing', () => {
    function expectOneLineError(r: ReturnType<typeof trainer>, ...needles: string[]) {
      expect(r.status).not.toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      for (const n of needles) expect(lines[0]).toContain(n);
    }

    it('a missing job folder', () => {
      const dir = join(tempDir(), 'nope');
      expectOneLineError(trainer(['train', dir]), dir, 'job folder not found');
      expect(existsSync(dir)).toBe(false);
    });

    it('an option whose value is not a number', () => {
      const dir = join(tempDir(), 'model');
      expectOneLineError(trainer(['demo-model', dir, '--dit-steps', '5x']), "demo-model: --dit-steps '5x': expected a number");
      expectOneLineError(trainer(['demo-model', dir, '--seed', '-3']), "--seed '-3'");
      expect(existsSync(dir)).toBe(false);
      expectOneLineError(trainer(['sample', 'presets/graft-tiny', '--out', join(dir, 'x.png'), '--lora', 'a.safetensors:big']), "the scale 'big'");
      expectOneLineError(trainer(['demo-model-eval', 'presets/graft-tiny', '--seeds', 'x']), "demo-model-eval: --seeds 'x'");
    });

    it('an option whose number is out of range', () => {
      const dir = join(tempDir(), 'model');
      expectOneLineError(trainer(['demo-model', dir, '--batch', '0']), 'demo-model: --batch 0: must be at least 1');
      expectOneLineError(trainer(['demo-model', dir, '--dit-steps', '-1']), '--dit-steps -1: must be at least 0');
      expectOneLineError(trainer(['demo-model', dir, '--lr', '0']), '--lr 0: the learning rate must be above 0');
      expectOneLineError(trainer(['demo-model', dir, '--ema-decay', '1']), '--ema-decay 1');
      expect(existsSync(dir)).toBe(false);
      expectOneLineError(trainer(['demo-job', 'presets/graft-tiny', dir, '--steps', '0']), 'demo-job: --steps 0: must be at least 1');
      expect(existsSync(dir)).toBe(false);
      // The picture side the demo model takes: a multiple of its autoencoder's factor 2 times 2x2 patches.
      const png = join(dir, 'x.png');
      expectOneLineError(trainer(['sample', 'presets/graft-tiny', '--out', png, '--size', '30']), 'sample: --size 30', 'a multiple of 4');
      expectOneLineError(trainer(['sample', 'presets/graft-tiny', '--out', png, '--size', '0']), 'sample: --size 0');
      expectOneLineError(trainer(['sample', 'presets/graft-tiny', '--out', png, '--scale', '0']), 'sample: --scale 0');
      expect(existsSync(png)).toBe(false);
    });

    it('a malformed job.json', () => {
      const dir = tinyJob();
      writeFileSync(join(dir, 'job.json'), '{"name": "tiny", "train": {"lr": ');
      expectOneLineError(trainer(['train', dir]), join(dir, 'job.json'), 'not valid JSON');
      expect(existsSync(join(dir, 'metrics.jsonl'))).toBe(false);
    });

    it('a wrongly typed field', () => {
      const dir = tinyJob((j) => { j.train.batch_size = 'two'; });
      expectOneLineError(trainer(['train', dir]), 'job.json', 'train.batch_size must be an integer', '"two"');
    });

    it('a checkpoint lacking a tensor', () => {
      const dir = tinyJob();
      const ckpt = join(dir, 'model/transformer.safetensors');
      dropTensor(ckpt, 'double_blocks.1.txt_mlp.2.weight');
      expectOneLineError(trainer(['train', dir]), ckpt, "'double_blocks.1.txt_mlp.2.weight' is missing");
      expect(existsSync(join(dir, 'metrics.jsonl'))).toBe(false);
    });

    it('a truncated safetensors file, without touching earlier outputs', () => {
      const dir = tinyJob((j) => { j.train.steps = 5; });
      expect(trainer(['train', dir]).status).toBe(0);
      const before = readFileSync(join(dir, 'tiny.safetensors'));
      const metricsBefore = readFileSync(join(dir, 'metrics.jsonl'));
      const job = JSON.parse(readFileSync(join(dir, 'job.json'), 'utf8'));
      job.train.steps = 10;
      writeFileSync(join(dir, 'job.json'), JSON.stringify(job));
      const latent = join(dir, 'cache/latents/item_0002.safetensors');
      truncateSync(latent, statSync(latent).size - 100);
      expectOneLineError(trainer(['train', dir]), latent, 'truncated');
      expect(readFileSync(join(dir, 'tiny.safetensors')).equals(before)).toBe(true);
      expect(readFileSync(join(dir, 'metrics.jsonl')).equals(metricsBefore)).toBe(true);
    });
  });
});

function readSafetensorsHeader(path: string): Record<string, any> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  return JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
}

/** Every tensor's raw bytes by name. */
function tensorBytes(path: string): Map<string, Buffer> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map<string, Buffer>();
  for (const [key, info] of Object.entries<any>(header))
    if (key !== '__metadata__') out.set(key, buf.subarray(8 + n + info.data_offsets[0], 8 + n + info.data_offsets[1]));
  return out;
}

/** Rewrites a safetensors file without one tensor (header and data), as a partial download might. */
function dropTensor(path: string, name: string) {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const data = buf.subarray(8 + n);
  delete header[name];
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [key, info] of Object.entries<any>(header)) {
    if (key === '__metadata__') continue;
    const [b, e] = info.data_offsets;
    parts.push(data.subarray(b, e));
    info.data_offsets = [offset, offset + (e - b)];
    offset += e - b;
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  writeFileSync(path, Buffer.concat([len, Buffer.from(text), ...parts]));
}
