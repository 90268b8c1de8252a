// job.json (format graft-job/2, trainer-cuda/JOB_JSON.md): the resolved job the trainer reads. Everything is
// filled in here: defaults, absolute paths, and every caption variant as token ids.
import { isPlainObject } from '../util/objpath.js';
import { trainerFormat } from '../config/quantization.js';
import type { ModelFiles, ModelTraits } from './model.js';
import { at, type Settings } from './settings.js';
import type { TokenIds } from './textTokenizers.js';
import { tokenizerPath } from './tokenizerFiles.js';

export const JOB_FORMAT = 'graft-job/2';

export interface JobItem {
  image: string;
  key: string;
  width: number;
  height: number;
  flip_x: boolean;
  flip_y: boolean;
  repeats: number;
  source: string;
  caption: string;
  tokens: TokenIds;
  dropout_tokens: TokenIds;
  dop_tokens?: TokenIds;
}

export interface JobDataset {
  folder: string;
  weight: number;
  is_reg: boolean;
  caption_dropout_rate: number;
  items: JobItem[];
}

export interface SamplePrompt {
  prompt: string;
  tokens: TokenIds;
  width: number;
  height: number;
  seed: number;
  lora_scale: number;
}

type Obj = Record<string, unknown>;
const num = (v: unknown, d: number): number => (typeof v === 'number' && Number.isFinite(v) ? v : d);
const bool = (v: unknown, d = false): boolean => (typeof v === 'boolean' ? v : d);
const str = (v: unknown, d: string): string => (typeof v === 'string' && v !== '' ? v : d);

const SAVE_DTYPES: Record<string, string> = { bfloat16: 'bf16', float16: 'fp16', float32: 'fp32' };

/** A sampling switch the reference keeps in train: (skip_first_sample, ...), also accepted under sample:. */
function samplingFlag(s: Settings, user: Obj, key: string): boolean {
  const inSample = at(user, 'sample', key);
  return typeof inSample === 'boolean' ? inSample : bool(at(s.process, 'train', key));
}

/** The guidance embedding's input while training (FLUX.1-dev), as the reference toolkit trains it. */
export const TRAIN_GUIDANCE = 1;

/**
 * What the job's guidance_scale means for this model: classifier-free guidance against the empty prompt for
 * a model without traits (the demo's) and for Z-Image (with its static time shift); for FLUX.1, no CFG (its
 * pipeline runs none) and, on dev, the input of the guidance embedding, with the sampler's time shift for
 * each sample's size.
 */
function sampleGuidance(scale: number, traits: ModelTraits | undefined): Obj {
  if (!traits) return { guidance_scale: scale };
  if (traits.classifierFree) return { guidance_scale: scale, shift: traits.sampleShift };
  return { guidance_scale: 1, ...(traits.guidanceEmbedding ? { guidance: scale } : {}), shift: traits.sampleShift };
}

/**
 * A sampling setting: the YAML's own value, else the model variant's default (Z-Image Turbo's 8 steps without
 * CFG, whichever preset the arch picked), else the preset's, else graft's.
 */
function sampleSetting(s: Settings, user: Obj, traits: ModelTraits | undefined, key: 'sample_steps' | 'guidance_scale', fallback: number): number {
  return num(at(user, 'sample', key), traits?.sampleDefaults?.[key] ?? num(at(s.process, 'sample', key), fallback));
}

/** The sample prompts as written: samples: [{prompt, ...}] or prompts: [text], the user's before the template's. */
export function samplePromptsOf(s: Settings, user: Obj): Obj[] {
  const pick = (sample: unknown): Obj[] | undefined => {
    if (!isPlainObject(sample)) return undefined;
    if (Array.isArray(sample.samples) && sample.samples.length > 0) return sample.samples.filter(isPlainObject);
    if (Array.isArray(sample.prompts) && sample.prompts.length > 0) return sample.prompts.map((p) => ({ prompt: String(p) }));
    return undefined;
  };
  return pick(user.sample) ?? pick(s.process.sample) ?? [];
}

export interface JobJsonInput {
  settings: Settings;
  /** The process entry exactly as the user wrote it. */
  user: Obj;
  name: string;
  jobDir: string;
  model: ModelFiles;
  /** job.json's "text": the encoders' lengths and the empty prompt (TextTokenizers.textSection). */
  text: Obj;
  datasets: JobDataset[];
  prompts: SamplePrompt[];
}

/** The lr_scheduler_params the trainer reads (cosine_with_restarts' cycles, a cosine's floor). */
function schedulerParams(v: unknown): Obj {
  if (!isPlainObject(v)) return {};
  return Object.fromEntries(['T_0', 'T_mult', 'eta_min'].filter((k) => typeof v[k] === 'number').map((k) => [k, v[k]]));
}

export function buildJobJson(i: JobJsonInput): Obj {
  const p = i.settings.process;
  const t = (k: string) => at(p, 'train', k);
  const sm = (k: string) => at(p, 'sample', k);
  const linear = num(at(p, 'network', 'linear'), 16);
  const dtype = str(at(p, 'save', 'dtype'), 'bf16');
  const dop = bool(t('diff_output_preservation'));
  const bpp = bool(t('blank_prompt_preservation'));
  const ema = at(p, 'train', 'ema_config');
  const demoEncoder = Object.keys(i.model.textEncoders).join() === 'text_encoder';
  const trainShift = num(at(i.user, 'train', 'timestep_shift'), i.model.traits?.trainShift ?? NaN);
  return {
    format: JOB_FORMAT,
    name: i.name,
    output_dir: i.jobDir,
    device: str(p.device, 'cpu'),
    trigger_word: typeof p.trigger_word === 'string' ? p.trigger_word : '',
    model: {
      arch: i.model.arch,
      name_or_path: i.model.name_or_path,
      // The frozen linear weights in the trainer's format nearest the qtype (config/quantization.ts;
      // support.ts says so where it is not the qtype itself).
      ...(at(p, 'model', 'quantize') === true ? { quantize: trainerFormat(str(at(p, 'model', 'qtype'), 'qfloat8')).format } : {}),
      ...(at(p, 'model', 'quantize_te') === true ? { quantize_te: trainerFormat(str(at(p, 'model', 'qtype_te'), 'qfloat8')).format } : {}),
      // Layer offloading: that share of the transformer's blocks streamed from pinned host memory.
      ...(at(p, 'model', 'layer_offloading') === true ? { offload_transformer: num(at(p, 'model', 'layer_offloading_transformer_percent'), 1) } : {}),
      ...(i.model.variant !== undefined ? { variant: i.model.variant } : {}),
      transformer: i.model.transformer,
      ...(demoEncoder ? { text_encoder: i.model.textEncoders.text_encoder } : { text_encoders: i.model.textEncoders }),
      // A single-file text encoder's shape (Z-Image's Qwen3 from ComfyUI), from the extras folder's config.json.
      ...(i.model.textEncoderConfig !== undefined ? { text_encoder_config: i.model.textEncoderConfig } : {}),
      ae: i.model.ae,
      ...(demoEncoder
        ? { tokenizer: tokenizerPath(i.model.tokenizers[0]!) }
        : { tokenizers: Object.fromEntries(i.model.tokenizers.map((t) => [t.name, tokenizerPath(t)])) }),
      ...(i.model.assistantLora !== undefined ? { assistant_lora: i.model.assistantLora } : {}),
    },
    network: {
      type: str(at(p, 'network', 'type'), 'lora'), linear, linear_alpha: num(at(p, 'network', 'linear_alpha'), linear),
      ...(at(p, 'network', 'type') === 'lokr' ? { lokr_factor: num(at(p, 'network', 'lokr_factor'), -1), lokr_full_rank: bool(at(p, 'network', 'lokr_full_rank')) } : {}),
    },
    train: {
      ...(i.model.traits?.guidanceEmbedding ? { guidance: TRAIN_GUIDANCE } : {}),
      steps: num(t('steps'), 3000),
      batch_size: num(t('batch_size'), 1),
      gradient_accumulation: num(t('gradient_accumulation') ?? t('gradient_accumulation_steps'), 1),
      lr: num(t('lr'), 1e-4),
      lr_scheduler: str(t('lr_scheduler'), 'constant'),
      // The reference spells it lr_scheduler_params.warmup_steps too.
      lr_warmup_steps: num(t('lr_warmup_steps') ?? at(p, 'train', 'lr_scheduler_params', 'warmup_steps'), 0),
      lr_scheduler_params: schedulerParams(t('lr_scheduler_params')),
      optimizer: str(t('optimizer'), 'adamw'),
      optimizer_params: isPlainObject(t('optimizer_params')) ? t('optimizer_params') : {},
      max_grad_norm: num(t('max_grad_norm'), 1.0),
      timestep_type: str(t('timestep_type'), 'sigmoid'),
      // The static time shift of `shift` timesteps (Z-Image's 3, or the YAML's train.timestep_shift); absent: FLUX's resolution shift.
      ...(Number.isFinite(trainShift) ? { timestep_shift: trainShift } : {}),
      content_or_style: str(t('content_or_style'), 'balanced'),
      seed: num(t('seed'), 42),
      cache_latents: i.settings.datasets.every((d) => d.cache_latents_to_disk === true || d.cache_latents === true),
      cache_text_embeddings: bool(t('cache_text_embeddings')),
      unload_text_encoder: bool(t('unload_text_encoder')),
      gradient_checkpointing: bool(t('gradient_checkpointing'), true),
      ...(isPlainObject(ema) && ema.use_ema === true ? { ema_config: { use_ema: true, ema_decay: num(ema.ema_decay, 0.99) } } : {}),
      ...(bool(t('do_differential_guidance')) ? {
        do_differential_guidance: true,
        differential_guidance_scale: num(t('differential_guidance_scale'), 3.0),
      } : {}),
      ...(bpp ? { blank_prompt_preservation: true, blank_prompt_preservation_multiplier: num(t('blank_prompt_preservation_multiplier'), 1.0) } : {}),
      ...(dop ? {
        diff_output_preservation: true,
        diff_output_preservation_multiplier: num(t('diff_output_preservation_multiplier'), 1.0),
        diff_output_preservation_class: str(t('diff_output_preservation_class'), 'person'),
      } : {}),
    },
    save: {
      dtype: SAVE_DTYPES[dtype] ?? dtype,
      save_every: num(at(p, 'save', 'save_every'), 250),
      max_step_saves_to_keep: num(at(p, 'save', 'max_step_saves_to_keep'), 4),
    },
    cache_dir: `${i.jobDir}/cache`,
    text: i.text,
    datasets: i.datasets,
    sample: {
      sample_every: num(sm('sample_every'), 250),
      width: num(sm('width'), 1024),
      height: num(sm('height'), 1024),
      seed: num(sm('seed'), 42),
      walk_seed: bool(sm('walk_seed')),
      ...sampleGuidance(sampleSetting(i.settings, i.user, i.model.traits, 'guidance_scale', 4), i.model.traits),
      sample_steps: sampleSetting(i.settings, i.user, i.model.traits, 'sample_steps', 20),
      skip_first_sample: samplingFlag(i.settings, i.user, 'skip_first_sample'),
      force_first_sample: samplingFlag(i.settings, i.user, 'force_first_sample'),
      disable_sampling: samplingFlag(i.settings, i.user, 'disable_sampling'),
      prompts: i.prompts,
    },
    config: i.user,
  };
}

/** Every sample prompt resolved: [trigger] replaced, size, seed (walk_seed: base + index) and LoRA scale. */
export function resolveSamplePrompts(s: Settings, user: Obj, trigger: string, replace: (text: string, trigger: string) => string, encode: (text: string) => TokenIds): SamplePrompt[] {
  const sm = (k: string) => at(s.process, 'sample', k);
  const base = num(sm('seed'), 42);
  const walk = bool(sm('walk_seed'));
  return samplePromptsOf(s, user).map((e, idx) => {
    const prompt = replace(String(e.prompt ?? ''), trigger);
    return {
      prompt,
      tokens: encode(prompt),
      width: num(e.width, num(sm('width'), 1024)),
      height: num(e.height, num(sm('height'), 1024)),
      seed: num(e.seed, walk ? base + idx : base),
      lora_scale: num(e.network_multiplier, 1.0),
    };
  });
}

/** JSON with two-space indents, lists of numbers (token ids) on one line: readable, and a tenth of the size. */
export function formatJobJson(value: unknown, indent = ''): string {
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'number')) return `[${value.join(', ')}]`;
    if (value.length === 0) return '[]';
    const inner = `${indent}  `;
    return `[\n${value.map((v) => inner + formatJobJson(v, inner)).join(',\n')}\n${indent}]`;
  }
  if (isPlainObject(value)) {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    if (entries.length === 0) return '{}';
    const inner = `${indent}  `;
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJobJson(v, inner)}`).join(',\n')}\n${indent}}`;
  }
  return JSON.stringify(value) ?? 'null';
}
