// Honest before a job runs: families and settings graft's trainer cannot carry out are refused up front
// (not a failed prepare stage a second later), and settings it accepts but ignores are named.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { newJobDoc, procPath, type JobDoc } from '../src/config/document.js';
import { ignoredSettings, trains, unsupportedIssues } from '../src/config/support.js';
import { unknownKeys } from '../src/config/validate.js';
import { loadPresets, presetById } from '../src/presets.js';
import { QueueError, resolveJob } from '../src/queue/queue.js';
import { setAt } from '../src/util/objpath.js';
import { tempDir, tinyJobYaml, writeImage } from './helpers/dataset.js';
import { rmSync } from 'node:fs';

const presets = loadPresets();
const tiny = presetById('graft_tiny', presets)!;
const zimage = presetById('zimage_turbo', presets)!;
const wan = presetById('wan22_14b_t2v', presets)!;
const P = procPath;
const doc = (preset = tiny): JobDoc => setAt(newJobDoc(preset, '/tmp/out', 'job1'), P('datasets', 0, 'folder_path'), '/data/set');
const rules = (d: JobDoc) => unsupportedIssues(d, presets).map((i) => i.rule);
const dir = tempDir('graft-support-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('what graft trains', () => {
  it('only the families its trainer runs end to end; a new job starts on one', () => {
    expect(presets.filter(trains).map((p) => p.family)).toEqual(['flux1', 'zimage_turbo', 'zimage', 'graft_tiny']);
    expect(unsupportedIssues(doc(), presets)).toEqual([]);
  });

  it('LoKr, every optimizer and scheduler the trainer has, and their settings, run', () => {
    const ok = (d: JobDoc) => expect(unsupportedIssues(d, presets)).toEqual([]);
    ok(setAt(setAt(doc(), P('network', 'type'), 'lokr'), P('network', 'lokr_full_rank'), true));
    for (const o of ['adamw', 'adamw8bit', 'lion', 'adafactor', 'prodigy']) ok(setAt(doc(), P('train', 'optimizer'), o));
    for (const s of ['constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts']) ok(setAt(doc(), P('train', 'lr_scheduler'), s));
    ok(setAt(setAt(doc(), P('train', 'optimizer'), 'adafactor'), P('train', 'optimizer_params'), { relative_step: true, scale_parameter: true, warmup_init: true, beta1: 0.9 }));
    ok(setAt(setAt(doc(), P('train', 'optimizer'), 'prodigy'), P('train', 'optimizer_params'), { d_coef: 2, growth_rate: 1.02, betas: [0.9, 0.99] }));
  });

  it('a family it does not train is refused at the arch, with what does train', () => {
    const issues = unsupportedIssues(doc(wan), presets);
    expect(issues.map((i) => [i.path, i.message])).toEqual([['config.process[0].model.arch',
      "not supported yet: Wan 2.2 T2V 14B: graft's trainer cannot train this family yet (trainer support: not yet); today it trains FLUX.1 (dev / schnell), Z-Image Turbo, Z-Image (base), graft-tiny (built-in demo, CPU). The config stays valid for the reference toolkit."]]);
  });

  it('Z-Image (Turbo and base) trains, layer offloading included on a GPU', () => {
    expect(unsupportedIssues(doc(zimage), presets)).toEqual([]);
    const offload = (device: string) => setAt(setAt(doc(zimage), P('device'), device), P('model', 'layer_offloading'), true);
    expect(ignoredSettings(offload('cuda:0'), presets).filter((i) => i.path.endsWith('model.layer_offloading'))).toEqual([]);
    expect(ignoredSettings(offload('cpu'), presets).map((i) => i.message)).toContain(
      "ignored by graft's trainer: Layer Offloading on the CPU: the weights are in host memory already");
  });

  it('settings the trainer would refuse at start are refused now', () => {
    expect(rules(setAt(doc(), P('train', 'optimizer'), 'automagic'))).toEqual(['optimizer']);
    expect(rules(setAt(doc(), P('train', 'optimizer'), 'lion8bit'))).toEqual(['optimizer']);
    expect(rules(setAt(setAt(doc(), P('train', 'optimizer'), 'lion'), P('train', 'optimizer_params', 'eps'), 1e-8))).toEqual(['optimizer-param']);
    expect(rules(setAt(setAt(doc(), P('train', 'optimizer'), 'prodigy'), P('train', 'optimizer_params', 'decouple'), false))).toEqual(['optimizer-param']);
    expect(rules(setAt(doc(), P('train', 'timestep_type'), 'flux_shift'))).toEqual(['timestep-type']);
    expect(rules(setAt(doc(), P('device'), 'mps'))).toEqual(['device']);
    expect(rules(setAt(doc(), P('network'), undefined))).toEqual(['full-fine-tune']);
    expect(rules(setAt(setAt(doc(), P('train', 'noise_scheduler'), 'ddpm'), P('sample', 'sampler'), 'ddpm'))).toEqual(['ddpm']);
  });
});

describe('what the trainer accepts but ignores', () => {
  const said = (d: JobDoc) => ignoredSettings(d, presets).map((i) => i.message);

  it('a new job of the demo family has none', () => {
    expect(said(doc())).toEqual([]);
  });

  it('names each, with what happens instead', () => {
    let d = setAt(doc(), P('train', 'optimizer'), 'adamw8bit');  // built: not named
    d = setAt(setAt(d, P('model', 'quantize'), true), P('model', 'qtype'), 'uint3');  // qfloat8, uint8 and uint4 are built: not named
    d = setAt(setAt(d, P('model', 'quantize_te'), true), P('model', 'qtype_te'), 'uint4');
    d = setAt(d, P('model', 'low_vram'), true);
    d = setAt(d, P('train', 'dtype'), 'bf16');
    expect(said(d)).toEqual([
      "ignored by graft's trainer: Transformer quantization uint3: uint3 runs as NF4 (4-bit NormalFloat, blocks of 64): graft has no 3-bit format, so it keeps more bits than asked",
      "ignored by graft's trainer: Low VRAM: the whole model stays on the device",
      "ignored by graft's trainer: train.dtype bf16: the CPU backend computes in fp32",
    ]);
  });

  it('layer offloading streams the transformer on a GPU; on the CPU, and for the text encoders, it is named', () => {
    const flux = presetById('flux1', presets)!;
    const on = setAt(doc(flux), P('model', 'layer_offloading'), true);
    expect(said(on)).toEqual(["ignored by graft's trainer: Text Encoder Offload %: the text encoders are not streamed; they are freed once every caption is encoded"]);
    expect(said(setAt(on, P('device'), 'cpu'))).toContain("ignored by graft's trainer: Layer Offloading on the CPU: the weights are in host memory already");
  });

  it('gradient checkpointing is used on either device, so it is not named', () => {
    for (const device of ['cpu', 'cuda:0']) {
      const d = setAt(setAt(doc(), P('device'), device), P('train', 'gradient_checkpointing'), true);
      expect(said(d).filter((m) => m.includes('checkpointing'))).toEqual([]);
    }
  });

  it('fields the trainer does use are not reported as ignored keys', () => {
    let d = setAt(doc(), P('train', 'seed'), 7);
    d = setAt(d, P('train', 'lr_warmup_steps'), 10);
    d = setAt(d, P('train', 'lr_scheduler_params'), { warmup_steps: 10, T_0: 100, T_mult: 2, eta_min: 1e-6 });
    d = setAt(d, P('train', 'optimizer_params'), { weight_decay: 0.01, betas: [0.9, 0.99], eps: 1e-8, d_coef: 2 });
    d = setAt(d, P('network', 'lokr_full_rank'), true);
    d = setAt(d, P('model', 'is_lumina2'), false);
    expect(unknownKeys(d)).toEqual([]);
  });
});

describe('the queue refuses up front', () => {
  it('a family graft does not train, and a dataset folder that is missing or empty, in one line each', async () => {
    const data = join(dir, 'data');
    mkdirSync(data);
    await writeImage(join(data, 'a.png'), { width: 32, height: 32 });
    const file = join(dir, 'job.yaml');
    const write = (extra: object) => writeFileSync(file, tinyJobYaml({ name: 'q1', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: data }], ...extra }));
    write({});
    expect(resolveJob(file, join(dir, 'home')).name).toBe('q1');
    write({ extra: { model: { arch: 'wan22_14b:t2v', name_or_path: 'ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16' } } });
    expect(() => resolveJob(file, join(dir, 'home'))).toThrow(QueueError);
    expect(() => resolveJob(file, join(dir, 'home'))).toThrow(`${file}: not supported yet: Wan 2.2 T2V 14B: graft's trainer cannot train this family yet`);
    write({ extra: { model: { arch: 'zimage:turbo', name_or_path: 'Tongyi-MAI/Z-Image-Turbo' } } });
    expect(resolveJob(file, join(dir, 'home')).name).toBe('q1');
    writeFileSync(file, tinyJobYaml({ name: 'q1', trainingFolder: join(dir, 'out'), datasets: [{ folder_path: join(dir, 'gone') }] }));
    expect(() => resolveJob(file, join(dir, 'home'))).toThrow(`${file}: config.process[0].datasets[0].folder_path: no such folder: ${join(dir, 'gone')}`);
  });
});

describe('extending a finished job', () => {
  it('raises train.steps on its own line, keeping the comments and layout of the file', async () => {
    const { withTrainStepsLine, writeTrainSteps, configuredSteps } = await import('../src/queue/extend.js');
    const yaml = 'job: extension\nconfig:\n  name: x\n  process:\n    - type: sd_trainer\n      train:\n        # how long\n        steps: 300  # a short run\n        lr: 1e-3\n      sample:\n        sample_steps: 20\n';
    expect(withTrainStepsLine(yaml, 900)).toBe(yaml.replace('steps: 300', 'steps: 900'));
    const file = join(dir, 'extend.yaml');
    writeFileSync(file, yaml);
    expect(writeTrainSteps(file, 900)).toEqual({ kept: true });
    expect(configuredSteps(file)).toBe(900);
    // No steps line under train: the file is written whole (and says so).
    writeFileSync(file, yaml.replace('        steps: 300  # a short run\n', ''));
    expect(writeTrainSteps(file, 900)).toEqual({ kept: false });
    expect(configuredSteps(file)).toBe(900);
  });
});
