// The demo LoRA on the shipped demo model (presets/graft-tiny), shortened: the job `make demo` runs
// (demo-job: bar pictures with the trigger zxq plus a regularization set; graft prepare; the trainer),
// with fewer steps. Measured by `graft-trainer demo-eval`, with and without the LoRA at the same seeds:
// - concept: the bar-likeness of what prompts with the trigger draw (IoU of the drawn form with a bar of
//   the same centroid and area, colour-blind) must rise clearly;
// - leak: the mean pixel change the LoRA causes on the same prompts naming a known shape (no trigger)
//   must stay well below the change another seed makes to the base model's picture of them.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, expect, it } from 'vitest';

const TRAINER = process.env.GRAFT_TRAINER ?? resolve('trainer-cuda/build/graft-trainer');
const CLI = resolve('dist/src/cli.js');
const MODEL = resolve('presets/graft-tiny');
const STEPS = 300;
const root = mkdtempSync(join(tmpdir(), 'graft-demo-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function run(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 600_000, env: { ...process.env, OMP_NUM_THREADS: '2' } });
  expect(r.status, `${file} ${args.join(' ')}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

interface DemoEval {
  samples: number;
  concept_iou_base: number;
  concept_iou_lora: number;
  other_iou_base: number;
  other_iou_lora: number;
  activation_change: number;
  leak_change: number;
  seed_change: number;
  colours_base: number;
  colours_lora: number;
}

it('the shortened demo LoRA draws bars for zxq and leaves prompts without it nearly unchanged', () => {
  const job = join(root, 'demo_zxq');
  run(TRAINER, ['demo-job', MODEL, job, '--steps', String(STEPS)]);
  run(process.execPath, [CLI, 'prepare', join(job, 'config.yaml')]);
  const config = JSON.parse(readFileSync(join(job, 'job.json'), 'utf8'));
  config.sample.disable_sampling = true; // demo-eval samples below, at fixed seeds with and without the LoRA
  writeFileSync(join(job, 'job.json'), JSON.stringify(config));
  run(TRAINER, ['train', job]);
  const out = run(TRAINER, ['demo-eval', MODEL, join(job, 'demo_zxq.safetensors'), '--seeds', '2', '--steps', '12']);
  const e = JSON.parse(out.trim().split('\n').at(-1)!) as DemoEval;
  console.log(out.trim().split('\n')[0]);
  expect(e.samples).toBe(6);
  // Thresholds: the gain measured on the full 600-step run (+0.17 over 24 samples; this run +0.22 over
  // 6), halved for a run half as long at 2 seeds.
  expect(e.concept_iou_lora - e.concept_iou_base).toBeGreaterThan(0.08);
  expect(e.concept_iou_lora).toBeGreaterThan(e.other_iou_lora - 0.2);
  // The leak is measured against what another seed changes in the base model's own picture: 0.03 of
  // it here, 0.14 over 24 samples of the full run (without DOP 0.12 here and 0.27 there).
  expect(e.leak_change).toBeLessThan(0.35 * e.seed_change);
  // The base model keeps the colours a caption names for a shape word it does not know (trained with
  // made-up shape words): 4 of these 6 zxq pictures, 75% over 24. The LoRA keeps 3 here (67% over
  // 24). With colour pairs drawn at random for its twenty pictures it learnt them with the bar (54%
  // over 24, without DOP); at most one lost here.
  expect(e.colours_base).toBeGreaterThanOrEqual(0.5);
  expect(e.colours_lora).toBeGreaterThan(e.colours_base - 0.2);
}, 900_000);

it('the shipped demo model draws the shapes, colours and backgrounds its prompts ask for', () => {
  // demo-model-eval reads back 40 pictures of one large shape (5 shapes x 4 colour pairs, two seeds).
  // The shipped model draws 92% of shapes, 100% of colours and 100% of backgrounds over 80 pictures
  // (100%, 100%, 100% on these seeds); the factor-4 model before it 95% here, the one before its
  // count-word contrast 77.5%, below the threshold; chance is 20%.
  const out = run(TRAINER, ['demo-model-eval', MODEL, '--seeds', '2']);
  const e = JSON.parse(out.trim().split('\n').at(-1)!) as {
    samples: number;
    shape: number;
    colour: number;
    background: number;
    autoencoder: { large: number; small: number };
    small: { shape: number };
    counts: { samples: number; right: number; drawn: number };
  };
  console.log(out.trim().split('\n').slice(0, 3).join('\n'));
  expect(e.samples).toBe(40);
  expect(e.shape).toBeGreaterThanOrEqual(0.9);
  expect(e.colour).toBeGreaterThanOrEqual(0.85);
  expect(e.background).toBeGreaterThanOrEqual(0.9);
  // The autoencoder gives every large outline back, and 75% of small ones here (76% over 80; the
  // factor-4 autoencoder gave back 61%: it rounded small shapes off).
  expect(e.autoencoder.large).toBeGreaterThanOrEqual(0.95);
  expect(e.autoencoder.small).toBeGreaterThanOrEqual(0.7);
  // Small shapes: 52% drawn as asked on these seeds (56% over 80 pictures); the factor-4 model drew
  // 40% here, and one that draws every small shape as the same blob scores 20%.
  expect(e.small.shape).toBeGreaterThanOrEqual(0.45);
  // Counts (50 pictures: a / two large, a / two / three small): the measure reads every true drawing of
  // those captions right, and the model 36 of its own (72%; 69% over 100 pictures). The factor-4 model
  // before its count-word contrast read 33 (66%), below this threshold.
  expect(e.counts.samples).toBe(50);
  expect(e.counts.drawn).toBeGreaterThanOrEqual(0.96);
  expect(e.counts.right).toBeGreaterThanOrEqual(0.68);
}, 300_000);
