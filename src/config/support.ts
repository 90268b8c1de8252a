// What graft's own trainer carries out today, said before a job runs. A config can be valid (the reference
// toolkit would run it) and still ask for what graft cannot do yet: a model family its trainer does not
// train, an optimizer it does not have. Those are "not supported yet": the New Job form says so at the
// field, `graft validate` exits 3, and the queue refuses the job, instead of a failure a second into
// `prepare`. Settings the trainer accepts but does not act on as asked (4- and 8-bit integer quantization,
// layer offloading) are
// warnings that name the setting and what happens instead.
import { familyFor, referenceOnlyFamily, type Preset } from '../presets.js';
import { formatPath, getAt, isPlainObject } from '../util/objpath.js';
import { PROC, procPath, type JobDoc } from './document.js';
import { at, resolveSettings } from '../prepare/settings.js';
import { effective, otherProcessKind, type Issue } from './validate.js';
import { trainerFormat } from './quantization.js';

/** What trainer-cuda reads from job.json (train/job.cpp, train/optimizers.cpp): anything else is refused there. */
export const TRAINER_OPTIMIZERS = ['adamw', 'adamw8bit', 'lion', 'adafactor', 'prodigy'] as const;
export const TRAINER_LR_SCHEDULERS = ['constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts'] as const;
/** The optimizer_params each optimizer takes (its constructor's arguments): another key stops the trainer. */
export const OPTIMIZER_PARAMS: Record<(typeof TRAINER_OPTIMIZERS)[number], string[]> = {
  adamw: ['weight_decay', 'betas', 'eps'],
  adamw8bit: ['weight_decay', 'betas', 'eps'],
  lion: ['weight_decay', 'betas'],
  adafactor: ['weight_decay', 'eps', 'clip_threshold', 'decay_rate', 'beta1', 'relative_step', 'scale_parameter', 'warmup_init'],
  prodigy: ['weight_decay', 'betas', 'beta3', 'eps', 'decouple', 'use_bias_correction', 'safeguard_warmup', 'd0', 'd_coef', 'growth_rate'],
};
export const TRAINER_TIMESTEP_TYPES = ['linear', 'sigmoid', 'weighted', 'shift', 'lognorm_blend'] as const;

/** Whether graft's trainer trains this family end to end on this machine today. */
export function trains(preset: Preset | undefined): boolean {
  return preset?.trainer_support === 'yes';
}

export function trainableFamilies(presets: Preset[]): Preset[] {
  return presets.filter(trains);
}

const P = (...rest: (string | number)[]) => formatPath(procPath(...rest));
const not = (rule: string, path: string, message: string): Issue => ({ level: 'unsupported', rule, path, message: `not supported yet: ${message}` });

/** What stops this job before it runs: everything here makes the trainer (or preparation) refuse it. */
export function unsupportedIssues(doc: JobDoc, presets: Preset[]): Issue[] {
  const proc = getAt(doc, PROC);
  if (!isPlainObject(proc)) return [];
  const out: Issue[] = [];
  const type = proc.type;
  if (otherProcessKind(doc)) {
    // Slider training and the other process kinds of the reference toolkit (job: train).
    return [not('process-type', P('type'), `${JSON.stringify(type)} training (job: ${JSON.stringify(getAt(doc, ['job']))}): graft trains LoRA adapters on datasets (process type diffusion_trainer, sd_trainer or ui_trainer, job: extension)`)];
  }
  const model = proc.model;
  const preset = familyFor(model, presets);
  const refOnly = preset ? undefined : referenceOnlyFamily(model);
  if (refOnly) {
    out.push(not('family', P('model', 'arch'), `${refOnly.label} (arch ${refOnly.arch}): graft has no preset for this family and its trainer cannot train it`));
  } else if (preset && !trains(preset)) {
    const ok = presets.filter(trains).map((p) => p.label).join(', ');
    out.push(not('family', P('model', 'arch'), `${preset.label}: graft's trainer cannot train this family yet (trainer support: ${preset.trainer_support}); today it trains ${ok}. The config stays valid for the reference toolkit.`));
  }
  const device = proc.device;
  if (typeof device === 'string' && /^mps/.test(device)) out.push(not('device', P('device'), `device ${device}: graft's trainer runs on NVIDIA GPUs (cuda:N) and the CPU (cpu), not on Apple's MPS`));
  if (!isPlainObject(proc.network)) out.push(not('full-fine-tune', P('network'), 'training every weight (no network: section): graft trains LoRA adapters; add network: {type: lora, linear: 16, linear_alpha: 16}'));
  if (isPlainObject(proc.adapter)) out.push(not('adapter', P('adapter'), `adapter training (adapter.type ${JSON.stringify(proc.adapter.type)}): graft trains LoRA adapters on the model itself`));
  const optimizer = effective(doc, 'train', 'optimizer');
  if (typeof optimizer === 'string' && !(TRAINER_OPTIMIZERS as readonly string[]).includes(optimizer)) {
    out.push(not('optimizer', P('train', 'optimizer'), `optimizer ${optimizer}: graft's trainer has ${TRAINER_OPTIMIZERS.join(', ')}`));
  } else if (typeof optimizer === 'string') {
    const takes = OPTIMIZER_PARAMS[optimizer as keyof typeof OPTIMIZER_PARAMS];
    const params = getAt(doc, procPath('train', 'optimizer_params'));
    for (const key of isPlainObject(params) ? Object.keys(params) : []) {
      if (!takes.includes(key)) out.push(not('optimizer-param', P('train', 'optimizer_params', key), `${key} is not a setting of ${optimizer} (it takes ${takes.join(', ')})`));
    }
    if (optimizer === 'prodigy' && isPlainObject(params) && params.decouple === false) {
      out.push(not('optimizer-param', P('train', 'optimizer_params', 'decouple'), 'decouple: false (weight decay added to the gradient): graft\'s Prodigy decays weights decoupled, as AdamW does'));
    }
  }
  const sched = effective(doc, 'train', 'lr_scheduler');
  if (typeof sched === 'string' && !(TRAINER_LR_SCHEDULERS as readonly string[]).includes(sched)) {
    out.push(not('lr-scheduler', P('train', 'lr_scheduler'), `lr_scheduler ${sched}: graft's trainer has ${TRAINER_LR_SCHEDULERS.join(', ')}`));
  }
  const ts = effective(doc, 'train', 'timestep_type');
  if (typeof ts === 'string' && !(TRAINER_TIMESTEP_TYPES as readonly string[]).includes(ts)) {
    out.push(not('timestep-type', P('train', 'timestep_type'), `timestep_type ${ts}: graft's trainer has ${TRAINER_TIMESTEP_TYPES.join(', ')}`));
  }
  if (trains(preset) && effective(doc, 'train', 'noise_scheduler') === 'ddpm') {
    out.push(not('ddpm', P('train', 'noise_scheduler'), `noise_scheduler ddpm for ${preset!.label}: graft's trainer trains this family with flow matching (flowmatch)`));
  }
  return out;
}

const ignored = (path: string, message: string): Issue => ({ level: 'warning', rule: 'trainer-ignores', path, message: `ignored by graft's trainer: ${message}` });

/**
 * Settings graft's trainer accepts but does not act on, for a family it trains: each named with what happens
 * instead. (For a family it does not train, the job does not run at all, which unsupportedIssues says.)
 */
export function ignoredSettings(doc: JobDoc, presets: Preset[]): Issue[] {
  const preset = familyFor(getAt(doc, procPath('model')), presets);
  if (!trains(preset)) return [];
  const out: Issue[] = [];
  // What the job will run with: the user's value, else the family's default, else graft's (as preparation does).
  const proc = getAt(doc, PROC);
  const settings = resolveSettings(isPlainObject(proc) ? proc : {}, preset).process;
  const effective = (_doc: JobDoc, ...path: string[]) => at(settings, ...path);
  for (const [qKey, tKey, label] of [['quantize', 'qtype', 'Transformer'], ['quantize_te', 'qtype_te', 'Text Encoder']] as const) {
    if (effective(doc, 'model', qKey) !== true) continue;
    const qtype = String(effective(doc, 'model', tKey) ?? 'qfloat8');
    const { note } = trainerFormat(qtype);
    if (note) out.push(ignored(P('model', tKey), `${label} quantization ${qtype}: ${note}`));
  }
  if (effective(doc, 'model', 'low_vram') === true) out.push(ignored(P('model', 'low_vram'), 'Low VRAM: the whole model stays on the device'));
  if (effective(doc, 'model', 'layer_offloading') === true && effective(doc, 'device') === 'cpu') {
    out.push(ignored(P('model', 'layer_offloading'), 'Layer Offloading on the CPU: the weights are in host memory already'));
  }
  if (effective(doc, 'model', 'layer_offloading') === true && getAt(doc, procPath('model', 'layer_offloading_text_encoder_percent')) !== undefined) {
    out.push(ignored(P('model', 'layer_offloading_text_encoder_percent'), 'Text Encoder Offload %: the text encoders are not streamed; they are freed once every caption is encoded'));
  }
  const device = effective(doc, 'device');
  const dtype = effective(doc, 'train', 'dtype');
  const DTYPE: Record<string, string> = { float32: 'fp32', float16: 'fp16', bfloat16: 'bf16' };
  const computes = device === 'cpu' ? 'fp32' : 'bf16';
  if (typeof dtype === 'string' && (DTYPE[dtype] ?? dtype) !== computes) {
    out.push(ignored(P('train', 'dtype'), `train.dtype ${dtype}: the ${device === 'cpu' ? 'CPU backend computes in fp32' : 'CUDA backend computes in bf16 with fp32 accumulation'}`));
  }
  const datasets = getAt(doc, procPath('datasets'));
  if (Array.isArray(datasets)) {
    datasets.forEach((d, i) => {
      if (!isPlainObject(d)) return;
      if (d.shuffle_tokens === true) out.push(ignored(P('datasets', i, 'shuffle_tokens'), 'shuffle_tokens: captions are used in their written order'));
      if (typeof d.token_dropout_rate === 'number' && d.token_dropout_rate > 0) out.push(ignored(P('datasets', i, 'token_dropout_rate'), 'token_dropout_rate: no caption token is dropped (caption_dropout_rate works)'));
    });
  }
  return out;
}
