// Every validation rule with a failing example and the exact message the user sees.
import { describe, expect, it } from 'vitest';
import { newJobDoc, procPath, type JobDoc } from '../src/config/document.js';
import { CROSS_RULES, validateJob } from '../src/config/validate.js';
import { jobWarnings } from '../src/config/warnings.js';
import { familyFor, loadPresets, presetById } from '../src/presets.js';
import { getAt, setAt, type Path } from '../src/util/objpath.js';

const presets = loadPresets();
const flux = presetById('flux1', presets)!;

function base(preset = flux): JobDoc {
  return setAt(newJobDoc(preset, '/tmp/out', 'job1'), procPath('datasets', 0, 'folder_path'), '/data/set');
}
const P = (...rest: (string | number)[]): Path => procPath(...rest);
const set = (path: Path, value: unknown) => (doc: JobDoc) => setAt(doc, path, value);
const messages = (doc: JobDoc) => validateJob(doc, presets).map((i) => i.message);

it('the base job is valid', () => {
  expect(validateJob(base(), presets)).toEqual([]);
});

const TYPE_CASES: [string, (d: JobDoc) => JobDoc, string][] = [
  ['job must be extension', set(['job'], 'extensions'), 'job: must be extension (got "extensions")'],
  ['name is folder-safe', set(['config', 'name'], 'my lora/v1'), 'config.name: must be a folder-safe name: letters, digits, . _ - (no spaces or slashes), starting with a letter or digit (got "my lora/v1")'],
  ['one process', set(['config', 'process'], []), 'config.process: must have one trainer process (got [])'],
  ['process type', set(P('type'), 'lora_trainer'), 'config.process[0].type: must be one of: diffusion_trainer, sd_trainer, ui_trainer (got "lora_trainer")'],
  ['device', set(P('device'), 'gpu0'), 'config.process[0].device: must be cuda:<gpu number> or cpu (got "gpu0")'],
  ['network type', set(P('network', 'type'), 'loha'), 'config.process[0].network.type: must be one of: lora, lokr (got "loha")'],
  ['rank is whole', set(P('network', 'linear'), 16.5), 'config.process[0].network.linear: must be a whole number from 1 to 1024 (got 16.5)'],
  ['rank is a number', set(P('network', 'linear'), 'sixteen'), 'config.process[0].network.linear: must be a whole number from 1 to 1024 (got "sixteen")'],
  ['rank in range', set(P('network', 'linear'), 0), 'config.process[0].network.linear: must be a whole number from 1 to 1024 (got 0)'],
  ['alpha positive', set(P('network', 'linear_alpha'), -1), 'config.process[0].network.linear_alpha: must be a number greater than 0 and at most 1024 (got -1)'],
  ['lokr factor not 0', set(P('network', 'lokr_factor'), 0), 'config.process[0].network.lokr_factor: must be -1 (most balanced split) or a factor of at least 1 (got 0)'],
  ['save dtype', set(P('save', 'dtype'), 'int8'), 'config.process[0].save.dtype: must be one of: bf16, fp16, fp32, float16, float32, bfloat16 (got "int8")'],
  ['save every', set(P('save', 'save_every'), 0), 'config.process[0].save.save_every: must be a whole number, at least 1 (got 0)'],
  ['saves to keep', set(P('save', 'max_step_saves_to_keep'), -1), 'config.process[0].save.max_step_saves_to_keep: must be a whole number from 0 to 1000 (got -1)'],
  ['datasets not empty', set(P('datasets'), []), 'config.process[0].datasets: must have at least one dataset (got [])'],
  ['dataset folder', set(P('datasets', 0, 'folder_path'), ''), 'config.process[0].datasets[0].folder_path: must not be empty: choose the dataset folder (got "")'],
  ['caption ext', set(P('datasets', 0, 'caption_ext'), 'md'), 'config.process[0].datasets[0].caption_ext: must be one of: txt, caption, json, jsonl (got "md")'],
  ['caption dropout', set(P('datasets', 0, 'caption_dropout_rate'), 1.5), 'config.process[0].datasets[0].caption_dropout_rate: must be a number at least 0 and at most 1 (got 1.5)'],
  ['resolution list', set(P('datasets', 0, 'resolution'), []), 'config.process[0].datasets[0].resolution: must list at least one resolution (got [])'],
  ['resolution size', set(P('datasets', 0, 'resolution'), [512, 16]), 'config.process[0].datasets[0].resolution[1]: must be a whole number from 32 to 4096 (got 16)'],
  ['resolution type', set(P('datasets', 0, 'resolution'), 'big'), 'config.process[0].datasets[0].resolution: must be a pixel size or a list of them, e.g. [512, 768, 1024] (got "big")'],
  ['lora weight', set(P('datasets', 0, 'network_weight'), 0), 'config.process[0].datasets[0].network_weight: must be a number greater than 0 and at most 100 (got 0)'],
  ['num repeats', set(P('datasets', 0, 'num_repeats'), 0), 'config.process[0].datasets[0].num_repeats: must be a whole number from 1 to 10000 (got 0)'],
  ['num frames', set(P('datasets', 0, 'num_frames'), 0), 'config.process[0].datasets[0].num_frames: must be a whole number from 1 to 1000 (got 0)'],
  ['flip is boolean', set(P('datasets', 0, 'flip_x'), 'yes'), 'config.process[0].datasets[0].flip_x: must be true or false (got "yes")'],
  ['control path', set(P('datasets', 0, 'control_path'), 5), 'config.process[0].datasets[0].control_path: must be a folder path, a list of them, or null (got 5)'],
  ['batch size', set(P('train', 'batch_size'), 0), 'config.process[0].train.batch_size: must be a whole number from 1 to 256 (got 0)'],
  ['accumulation', set(P('train', 'gradient_accumulation'), 0), 'config.process[0].train.gradient_accumulation: must be a whole number from 1 to 1024 (got 0)'],
  ['steps', set(P('train', 'steps'), 0), 'config.process[0].train.steps: must be a whole number from 1 to 1000000 (got 0)'],
  ['learning rate positive', set(P('train', 'lr'), 0), 'config.process[0].train.lr: must be a number greater than 0 and at most 10 (got 0)'],
  ['learning rate number', set(P('train', 'lr'), 'fast'), 'config.process[0].train.lr: must be a number greater than 0 and at most 10 (got "fast")'],
  ['optimizer', set(P('train', 'optimizer'), 'rmsprop'), 'config.process[0].train.optimizer: must be one of: adamw, adamw8bit, adam, adam8bit, adafactor, prodigy, prodigy8bit, prodigy_schedulefree, lion, lion8bit, sgd, automagic, dadaptation (got "rmsprop")'],
  ['weight decay', set(P('train', 'optimizer_params', 'weight_decay'), 2), 'config.process[0].train.optimizer_params.weight_decay: must be a number at least 0 and at most 1 (got 2)'],
  ['lr scheduler', set(P('train', 'lr_scheduler'), 'step'), 'config.process[0].train.lr_scheduler: must be one of: constant, constant_with_warmup, linear, cosine, cosine_with_restarts (got "step")'],
  ['grad norm', set(P('train', 'max_grad_norm'), -1), 'config.process[0].train.max_grad_norm: must be a number at least 0 and at most 1000 (got -1)'],
  ['noise scheduler', set(P('train', 'noise_scheduler'), 'euler'), 'config.process[0].train.noise_scheduler: must be one of: flowmatch, ddpm (got "euler")'],
  ['timestep type', set(P('train', 'timestep_type'), 'cubic'), 'config.process[0].train.timestep_type: must be one of: linear, sigmoid, weighted, shift, lognorm_blend, flux_shift, lumina2_shift, next_sample, one_step (got "cubic")'],
  ['timestep bias', set(P('train', 'content_or_style'), 'both'), 'config.process[0].train.content_or_style: must be one of: balanced, content, style (got "both")'],
  ['ema decay below 1', set(P('train', 'ema_config', 'ema_decay'), 1), 'config.process[0].train.ema_config.ema_decay: must be a number greater than 0 and below 1 (got 1)'],
  ['dop multiplier', set(P('train', 'diff_output_preservation_multiplier'), -1), 'config.process[0].train.diff_output_preservation_multiplier: must be a number at least 0 and at most 100 (got -1)'],
  ['guidance scale', set(P('train', 'differential_guidance_scale'), -1), 'config.process[0].train.differential_guidance_scale: must be a number greater than 0 and at most 100 (got -1)'],
  ['switch every', set(P('train', 'switch_boundary_every'), 0), 'config.process[0].train.switch_boundary_every: must be a whole number from 1 to 100000 (got 0)'],
  ['train dtype', set(P('train', 'dtype'), 'int4'), 'config.process[0].train.dtype: must be one of: bf16, fp16, fp32, float16, float32, bfloat16 (got "int4")'],
  ['booleans', set(P('train', 'gradient_checkpointing'), 'on'), 'config.process[0].train.gradient_checkpointing: must be true or false (got "on")'],
  ['base model', set(P('model', 'name_or_path'), ''), 'config.process[0].model.name_or_path: must not be empty: a local folder or file, or a hub id org/model[@revision] (got "")'],
  ['qtype', set(P('model', 'qtype'), 'int2'), 'config.process[0].model.qtype: must be a quantization type: qfloat8, uint8, uint6, uint4, or uint3|<adapter> (got "int2")'],
  ['offload share', set(P('model', 'layer_offloading_transformer_percent'), 1.5), 'config.process[0].model.layer_offloading_transformer_percent: must be a number at least 0 and at most 1 (got 1.5)'],
  ['model kwargs', set(P('model', 'model_kwargs'), 'x'), 'config.process[0].model.model_kwargs: must be a mapping (got "x")'],
  ['sample width', set(P('sample', 'width'), 16), 'config.process[0].sample.width: must be a whole number from 32 to 4096 (got 16)'],
  ['sample steps', set(P('sample', 'sample_steps'), 0), 'config.process[0].sample.sample_steps: must be a whole number from 1 to 1000 (got 0)'],
  ['seed', set(P('sample', 'seed'), -1), 'config.process[0].sample.seed: must be a whole number, at least 0 (got -1)'],
  ['sample guidance', set(P('sample', 'guidance_scale'), -1), 'config.process[0].sample.guidance_scale: must be a number at least 0 and at most 100 (got -1)'],
  ['fps', set(P('sample', 'fps'), 0), 'config.process[0].sample.fps: must be a whole number from 1 to 240 (got 0)'],
  ['prompts list', set(P('sample', 'prompts'), 'a cat'), 'config.process[0].sample.prompts: must be a list of prompt texts (got "a cat")'],
  ['sample prompt', set(P('sample', 'samples', 0, 'prompt'), 7), 'config.process[0].sample.samples[0].prompt: must be text (got 7)'],
  ['sample own width', set(P('sample', 'samples', 0, 'width'), 10), 'config.process[0].sample.samples[0].width: must be a whole number from 32 to 4096 (got 10)'],
  ['lora scale', set(P('sample', 'samples', 0, 'network_multiplier'), 20), 'config.process[0].sample.samples[0].network_multiplier: must be a number at least -10 and at most 10 (got 20)'],
];

describe('types and ranges', () => {
  it.each(TYPE_CASES)('%s', (_, mutate, message) => {
    expect(messages(mutate(base()))).toEqual([message]);
  });
});

describe('model architecture', () => {
  it('an unknown arch lists the allowed ones', () => {
    const m = messages(set(P('model', 'arch'), 'flux3')(base()));
    expect(m).toHaveLength(1);
    expect(m[0]).toMatch(/^config\.process\[0\]\.model\.arch: unknown model architecture \(got "flux3"\)\. Allowed: flux, flux2, flex1, .*wan22_14b:t2v, wan22_14b, .*ltx2$/);
  });
  it('a missing arch is taken from name_or_path, else as SD 1.5 (the reference default), and the warning says which', () => {
    const noArch = set(P('model', 'arch'), undefined)(base());
    expect(messages(noArch)).toEqual([]);
    expect(familyFor(getAt(noArch, P('model')), presets)?.family).toBe('flux1');
    expect(jobWarnings(noArch, { preset: flux, presets }).map((w) => w.message)).toContain('model.arch is missing: taken as FLUX.1 (dev / schnell) from name_or_path; set model.arch: flux to say so');
    const unknown = set(P('model', 'name_or_path'), 'someone/some-model')(noArch);
    expect(familyFor(getAt(unknown, P('model')), presets)?.family).toBe('sd15');
    expect(jobWarnings(unknown, { preset: presetById('sd15', presets), presets }).map((w) => w.message)).toContainEqual(expect.stringMatching(/^model\.arch is missing and no legacy flag says the family: taken as SD 1\.5/));
  });
});

const CROSS_CASES: [string, (d: JobDoc) => JobDoc, string, (JobDoc | undefined)?][] = [
  ['unload-te-with-cache-te', (d) => set(P('train', 'cache_text_embeddings'), true)(set(P('train', 'unload_text_encoder'), true)(d)),
    'config.process[0].train.cache_text_embeddings: true excludes config.process[0].train.unload_text_encoder: true. Cache Text Embeddings encodes every caption once and frees the text encoder; Unload TE encodes only the trigger word and ignores captions. Turn one off.'],
  ['dop-with-blank-prompt', (d) => set(P('train', 'blank_prompt_preservation'), true)(set(P('train', 'diff_output_preservation'), true)(d)),
    'config.process[0].train.blank_prompt_preservation: true excludes config.process[0].train.diff_output_preservation: true. Use only one of Differential Output Preservation and Blank Prompt Preservation.'],
  ['cache-te-with-dop', (d) => set(P('train', 'cache_text_embeddings'), true)(set(P('train', 'diff_output_preservation'), true)(d)),
    'config.process[0].train.cache_text_embeddings: true excludes config.process[0].train.diff_output_preservation: true. DOP encodes a new prompt every step (the caption with the trigger replaced by the Preservation Class), so the text encoder must stay loaded. Turn off Cache Text Embeddings or DOP.'],
  ['cache-te-with-changing-captions', (d) => set(P('train', 'cache_text_embeddings'), true)(set(P('datasets', 0, 'token_dropout_rate'), 0.1)(d)),
    'config.process[0].datasets[0].token_dropout_rate: 0.1 changes the caption text every step, which cached text embeddings cannot follow (config.process[0].train.cache_text_embeddings: true). Turn one off. (Plain caption dropout is fine: the empty caption is cached once.)'],
  ['dop-needs-class', (d) => set(P('train', 'diff_output_preservation_class'), ' ')(set(P('train', 'diff_output_preservation'), true)(d)),
    'config.process[0].train.diff_output_preservation_class: must name what the subject is (e.g. person) when Differential Output Preservation is on (got " ")'],
  ['multistage-trains-nothing', (d) => set(P('model', 'model_kwargs'), { train_high_noise: false, train_low_noise: false })(d),
    'config.process[0].model.model_kwargs: train_high_noise and train_low_noise are both false, so nothing would be trained. Turn on at least one.', base(presetById('wan22_14b_t2v', presets)!)],
  ['sampler-matches-scheduler', set(P('sample', 'sampler'), 'ddpm'),
    'config.process[0].sample.sampler: "ddpm" must match config.process[0].train.noise_scheduler ("flowmatch"): samples are drawn with the schedule the model is trained on'],
];

describe('excluded combinations', () => {
  it.each(CROSS_CASES)('%s', (rule, mutate, message, start) => {
    const issues = validateJob(mutate(start ?? base()), presets);
    expect(issues.map((i) => [i.rule, i.message])).toEqual([[rule, message]]);
  });
  it('every cross rule has a failing example above', () => {
    expect(CROSS_CASES.map(([r]) => r).sort()).toEqual(CROSS_RULES.map((r) => r.rule).sort());
  });
  it('plain caption dropout with cached text embeddings is allowed (the empty caption is cached once)', () => {
    expect(validateJob(set(P('train', 'cache_text_embeddings'), true)(base()), presets)).toEqual([]);
  });
});

describe('warnings', () => {
  const warnings = (doc: JobDoc, extra: Partial<Parameters<typeof jobWarnings>[1]> = {}) =>
    jobWarnings(doc, { ...extra, presets, preset: extra.preset ?? familyFor(getAt(doc, P('model')), presets) }).map((w) => [w.rule, w.message]);

  it('Save Every differs from Sample Every', () => {
    expect(warnings(set(P('save', 'save_every'), 500)(base()))).toContainEqual(['save-every-vs-sample-every', 'Save Every (500) differs from Sample Every (250): some checkpoints will have no samples to judge them by.']);
  });
  it('effective batch larger than the dataset', () => {
    const doc = set(P('train', 'gradient_accumulation'), 4)(set(P('train', 'batch_size'), 4)(base()));
    expect(warnings(doc, { preset: flux, datasetSizes: { '/data/set': 10 } })).toContainEqual(['effective-batch-exceeds-dataset', 'Effective batch 4 x 4 = 16 is larger than the dataset (10 items): every step repeats images.']);
    expect(warnings(doc, { preset: flux, datasetSizes: { '/data/set': 16 } }).map(([r]) => r)).not.toContain('effective-batch-exceeds-dataset');
  });
  it('DOP without a regularization dataset or trigger', () => {
    expect(warnings(set(P('train', 'diff_output_preservation'), true)(base()))).toContainEqual(['dop-without-reg-or-trigger', 'Differential Output Preservation without a Trigger Word (DOP replaces it with the Preservation Class) and a regularization dataset.']);
  });
  it('rank above 64', () => {
    expect(warnings(set(P('network', 'linear'), 128)(base()))).toContainEqual(['rank-above-64', 'Linear Rank 128 is above 64: larger files, more VRAM, and easier overfitting; 16-32 suits most subjects and styles.']);
  });
  it('a GPU this machine does not have', () => {
    expect(warnings(base(), { preset: flux, gpus: [] })).toContainEqual(['no-such-gpu', 'GPU 0: this machine has no GPU; the queue refuses cuda:0 here (set GPU ID to cpu)']);
    expect(warnings(set(P('device'), 'cuda:3')(base()), { preset: flux, gpus: [{ index: 0, name: 'H200', memoryMb: 143771 }] })).toContainEqual(['no-such-gpu', 'GPU 3: not on this machine (it has GPU 0); the queue refuses it']);
    expect(warnings(set(P('device'), 'cpu')(base()), { preset: flux, gpus: [] }).map(([r]) => r)).not.toContain('no-such-gpu');
  });
  it('a real model on the CPU (the demo model is made for it)', () => {
    expect(warnings(set(P('device'), 'cpu')(base()), { preset: flux, gpus: [] })).toContainEqual(['real-model-on-cpu', 'FLUX.1 (dev / schnell) on the CPU: each step at 1024 px takes minutes and tens of GB of memory; set GPU ID to a GPU.']);
    expect(warnings(base(), { preset: flux, gpus: [{ index: 0, name: 'H200', memoryMb: 143771 }] }).map(([r]) => r)).not.toContain('real-model-on-cpu');
    const tiny = presetById('graft_tiny', presets)!;
    expect(warnings(set(P('device'), 'cpu')(base(tiny)), { preset: tiny, gpus: [] }).map(([r]) => r)).not.toContain('real-model-on-cpu');
  });
  it('GPU below the family minimum', () => {
    expect(warnings(base(), { preset: flux, gpus: [{ index: 0, name: 'RTX 4080', memoryMb: 16376 }] })).toContainEqual(['vram-below-minimum', 'FLUX.1 (dev / schnell) needs about 24 GB (guide: 24 GB minimum, 48 GB+ comfortable); GPU 0 (RTX 4080) has 16 GB.']);
  });
  it('resolutions the guide says will not fit on the selected GPU', () => {
    const doc = set(P('datasets', 0, 'resolution'), [1024, 1536])(base());
    expect(warnings(doc, { preset: flux, gpus: [{ index: 0, name: 'RTX 4090', memoryMb: 24564 }] })).toContainEqual(['resolution-vs-vram', 'Resolution 1536 may not fit on GPU 0 (24 GB): the FLUX.1 (dev / schnell) guide (24 GB minimum, 48 GB+ comfortable) fits up to 1024 px near 24 GB.']);
    expect(warnings(doc, { preset: flux, gpus: [{ index: 0, name: 'H100', memoryMb: 81559 }] }).map(([r]) => r)).not.toContain('resolution-vs-vram');
  });
  it('edit models without a control dataset', () => {
    const kontext = presetById('flux_kontext', presets)!;
    expect(warnings(base(kontext))).toContainEqual(['edit-without-control', 'FLUX.1 Kontext learns edits from pairs: set a Control Dataset (the "before" images) for dataset 1.']);
  });
});
