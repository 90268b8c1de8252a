// The job config schema: types and ranges of every key graft understands, in the reference layout.
// Objects are loose: keys graft does not know are kept (and reported once as ignored, see unknownKeys).
import { z } from 'zod';

// The smallest picture side: the built-in demo model (graft_tiny) works at 32 px.
const MIN_PIXELS = 32;

const num = (allowed: string) => z.number({ error: allowed }).refine(Number.isFinite, { error: allowed });

export function intIn(min: number, max?: number) {
  const allowed = max === undefined ? `must be a whole number, at least ${min}` : `must be a whole number from ${min} to ${max}`;
  let s = z.number({ error: allowed }).int({ error: allowed }).min(min, { error: allowed });
  if (max !== undefined) s = s.max(max, { error: allowed });
  return s;
}

export function numIn(min: number, max: number, opts: { minExclusive?: boolean } = {}) {
  const low = opts.minExclusive ? `greater than ${min}` : `at least ${min}`;
  const allowed = max === Infinity ? `must be a number ${low}` : `must be a number ${low} and at most ${max}`;
  return num(allowed).refine((v) => (opts.minExclusive ? v > min : v >= min) && v <= max, { error: allowed });
}

const bool = () => z.boolean({ error: 'must be true or false' });
const str = () => z.string({ error: 'must be text' });
const nonEmpty = (what: string) => z.string({ error: `must be text: ${what}` }).trim().min(1, { error: `must not be empty: ${what}` });
function oneOf<const T extends readonly [string, ...string[]]>(values: T) {
  return z.enum(values, { error: `must be one of: ${values.join(', ')}` });
}

// The reference toolkit's names; support.ts says which graft's trainer has.
export const OPTIMIZERS = ['adamw', 'adamw8bit', 'adam', 'adam8bit', 'adafactor', 'prodigy', 'prodigy8bit', 'prodigy_schedulefree', 'lion', 'lion8bit', 'sgd', 'automagic', 'dadaptation'] as const;
export const LR_SCHEDULERS = ['constant', 'constant_with_warmup', 'linear', 'cosine', 'cosine_with_restarts'] as const;
export const TIMESTEP_TYPES = ['linear', 'sigmoid', 'weighted', 'shift', 'lognorm_blend', 'flux_shift', 'lumina2_shift', 'next_sample', 'one_step'] as const;
export const CONTENT_OR_STYLE = ['balanced', 'content', 'style'] as const;
export const SAVE_DTYPES = ['bf16', 'fp16', 'fp32', 'float16', 'float32', 'bfloat16'] as const;
export const TRAIN_DTYPES = ['bf16', 'fp16', 'fp32', 'float16', 'float32', 'bfloat16'] as const;
export const CAPTION_EXTS = ['txt', 'caption', 'json', 'jsonl'] as const;
/** caption_ext as the reference reads it: "txt" or ".txt". */
const captionExt = () => z.string({ error: `must be one of: ${CAPTION_EXTS.join(', ')}` })
  .refine((v) => (CAPTION_EXTS as readonly string[]).includes(v.replace(/^\./, '')), { error: `must be one of: ${CAPTION_EXTS.join(', ')}` });
export const SAMPLERS = ['flowmatch', 'ddpm'] as const;
export const PROCESS_TYPES = ['diffusion_trainer', 'sd_trainer', 'ui_trainer'] as const;
// A quantization type, optionally followed by |<accuracy recovery adapter> (the reference's spelling).
const QTYPE_RE = /^(qfloat8|float8|uint8|uint7|uint6|uint5|uint4|uint3|uint2|qint8|qint4)(\|.+)?$/;
const qtype = () => z.string({ error: 'must be a quantization type such as qfloat8, uint8, uint6, uint4, uint3|<adapter>' })
  .regex(QTYPE_RE, { error: 'must be a quantization type: qfloat8, uint8, uint6, uint4, or uint3|<adapter>' });

const resolution = z.union([
  intIn(MIN_PIXELS, 4096),
  z.array(intIn(MIN_PIXELS, 4096), { error: 'must be a list of pixel sizes, e.g. [512, 768, 1024]' })
    .min(1, { error: 'must list at least one resolution' }),
], { error: 'must be a pixel size or a list of them, e.g. [512, 768, 1024]' });

const nullableText = () => z.union([str(), z.null()], { error: 'must be text or null' });

export const DatasetSchema = z.looseObject({
  folder_path: nonEmpty('choose the dataset folder'),
  caption_ext: captionExt().optional(),
  default_caption: str().optional(),
  caption_dropout_rate: numIn(0, 1).optional(),
  shuffle_tokens: bool().optional(),
  token_dropout_rate: numIn(0, 1).optional(),
  resolution: resolution.optional(),
  cache_latents_to_disk: bool().optional(),
  cache_latents: bool().optional(),
  is_reg: bool().optional(),
  network_weight: numIn(0, 100, { minExclusive: true }).optional(),
  num_repeats: intIn(1, 10000).optional(),
  flip_x: bool().optional(),
  flip_y: bool().optional(),
  num_frames: intIn(1, 1000).optional(),
  control_path: z.union([str(), z.array(str()), z.null()], { error: 'must be a folder path, a list of them, or null' }).optional(),
});

export const SampleItemSchema = z.looseObject({
  prompt: str(),
  width: intIn(MIN_PIXELS, 4096).optional(),
  height: intIn(MIN_PIXELS, 4096).optional(),
  seed: intIn(0).optional(),
  network_multiplier: numIn(-10, 10).optional(),
  ctrl_img: nullableText().optional(),
});

export const ProcessSchema = z.looseObject({
  type: oneOf(PROCESS_TYPES),
  training_folder: nonEmpty('where job folders go').optional(),
  // mps is the reference toolkit's Apple GPU: valid there, not supported by graft's trainer (support.ts).
  device: z.string({ error: 'must be a device such as cuda:0' }).regex(/^(cuda:\d+|cuda|cpu|mps(:\d+)?)$/, { error: 'must be cuda:<gpu number> or cpu' }).optional(),
  trigger_word: nullableText().optional(),
  // Optional: a config without it trains every weight (full fine-tuning), which graft does not support yet.
  network: z.looseObject({
    type: oneOf(['lora', 'lokr'] as const).optional(),
    linear: intIn(1, 1024).optional(),
    linear_alpha: numIn(0, 1024, { minExclusive: true }).optional(),
    conv: intIn(1, 1024).optional(),
    conv_alpha: numIn(0, 1024, { minExclusive: true }).optional(),
    lokr_factor: intIn(-1, 1024).refine((v) => v !== 0, { error: 'must be -1 (most balanced split) or a factor of at least 1' }).optional(),
    lokr_full_rank: bool().optional(),
    network_kwargs: z.record(z.string(), z.unknown()).optional(),
  }).optional(),
  adapter: z.record(z.string(), z.unknown(), { error: 'must be a mapping' }).optional(),
  save: z.looseObject({
    dtype: oneOf(SAVE_DTYPES).optional(),
    save_every: intIn(1).optional(),
    max_step_saves_to_keep: intIn(0, 1000).optional(),
  }).optional(),
  datasets: z.array(DatasetSchema, { error: 'must be a list of dataset blocks' }).min(1, { error: 'must have at least one dataset' }),
  train: z.looseObject({
    batch_size: intIn(1, 256).optional(),
    gradient_accumulation: intIn(1, 1024).optional(),
    gradient_accumulation_steps: intIn(1, 1024).optional(),
    steps: intIn(1, 1_000_000).optional(),
    lr: numIn(0, 10, { minExclusive: true }).optional(),
    optimizer: oneOf(OPTIMIZERS).optional(),
    // What each optimizer takes (support.ts says which keys go with which optimizer).
    optimizer_params: z.looseObject({
      weight_decay: numIn(0, 1).optional(),
      betas: z.array(numIn(0, 1), { error: 'must be two numbers in [0, 1)' }).length(2, { error: 'must be two numbers in [0, 1)' }).optional(),
      eps: z.union([numIn(0, 1), z.array(numIn(0, 1)).length(2)], { error: 'must be a number (Adafactor: two numbers)' }).optional(),
      clip_threshold: numIn(0, 1e6, { minExclusive: true }).optional(),
      decay_rate: numIn(-1, 0).optional(),
      beta1: numIn(0, 1).nullable().optional(),
      beta3: numIn(0, 1).nullable().optional(),
      relative_step: bool().optional(),
      scale_parameter: bool().optional(),
      warmup_init: bool().optional(),
      decouple: bool().optional(),
      use_bias_correction: bool().optional(),
      safeguard_warmup: bool().optional(),
      d0: numIn(0, 1e6, { minExclusive: true }).optional(),
      d_coef: numIn(0, 1e6, { minExclusive: true }).optional(),
      growth_rate: numIn(1, 1e300).optional(),
    }).optional(),
    lr_scheduler: oneOf(LR_SCHEDULERS).optional(),
    lr_warmup_steps: intIn(0).optional(),
    lr_scheduler_params: z.looseObject({
      warmup_steps: intIn(0).optional(),
      T_0: intIn(1).optional(),     // cosine_with_restarts: steps in the first cycle
      T_mult: intIn(1, 1000).optional(),  // each cycle this many times longer than the one before
      eta_min: numIn(0, 10).optional(),   // the lowest learning rate of a cosine
    }).optional(),
    seed: intIn(0).optional(),
    max_grad_norm: numIn(0, 1000).optional(),
    noise_scheduler: oneOf(SAMPLERS).optional(),
    timestep_type: oneOf(TIMESTEP_TYPES).optional(),
    // graft's own: the static time shift `shift` timesteps draw through (Z-Image's scheduler: 3), in place
    // of the family's default (FLUX.1: the resolution shift).
    timestep_shift: numIn(0.01, 100).optional(),
    content_or_style: oneOf(CONTENT_OR_STYLE).optional(),
    ema_config: z.looseObject({
      use_ema: bool().optional(),
      ema_decay: numIn(0, 1, { minExclusive: true }).refine((v) => v < 1, { error: 'must be a number greater than 0 and below 1' }).optional(),
    }).optional(),
    cache_text_embeddings: bool().optional(),
    unload_text_encoder: bool().optional(),
    diff_output_preservation: bool().optional(),
    diff_output_preservation_multiplier: numIn(0, 100).optional(),
    diff_output_preservation_class: str().optional(),
    blank_prompt_preservation: bool().optional(),
    blank_prompt_preservation_multiplier: numIn(0, 100).optional(),
    do_differential_guidance: bool().optional(),
    differential_guidance_scale: numIn(0, 100, { minExclusive: true }).optional(),
    switch_boundary_every: intIn(1, 100000).optional(),
    bypass_guidance_embedding: bool().optional(),
    skip_first_sample: bool().optional(),
    force_first_sample: bool().optional(),
    disable_sampling: bool().optional(),
    dtype: oneOf(TRAIN_DTYPES).optional(),
    gradient_checkpointing: bool().optional(),
  }).optional(),
  model: z.looseObject({
    arch: str().optional(),
    name_or_path: nonEmpty('a local folder or file, or a hub id org/model[@revision]'),
    quantize: bool().optional(),
    qtype: qtype().optional(),
    quantize_te: bool().optional(),
    qtype_te: qtype().optional(),
    low_vram: bool().optional(),
    layer_offloading: bool().optional(),
    layer_offloading_transformer_percent: numIn(0, 1).optional(),
    layer_offloading_text_encoder_percent: numIn(0, 1).optional(),
    assistant_lora_path: nullableText().optional(),
    extras_name_or_path: nullableText().optional(),
    // Legacy family flags (older configs say is_flux: true instead of arch: flux).
    ...Object.fromEntries(['is_flux', 'is_xl', 'is_v2', 'is_v3', 'is_lumina2', 'is_pixart', 'is_pixart_sigma', 'is_auraflow', 'is_ssd', 'is_vega', 'is_v_pred']
      .map((k) => [k, bool().optional()])),
    model_kwargs: z.record(z.string(), z.unknown(), { error: 'must be a mapping' }).optional(),
  }, { error: 'must be a mapping with at least name_or_path' }),
  sample: z.looseObject({
    sampler: oneOf(SAMPLERS).optional(),
    sample_every: intIn(1).optional(),
    width: intIn(MIN_PIXELS, 4096).optional(),
    height: intIn(MIN_PIXELS, 4096).optional(),
    seed: intIn(0).optional(),
    walk_seed: bool().optional(),
    guidance_scale: numIn(0, 100).optional(),
    sample_steps: intIn(1, 1000).optional(),
    num_frames: intIn(1, 1000).optional(),
    fps: intIn(1, 240).optional(),
    prompts: z.array(str(), { error: 'must be a list of prompt texts' }).optional(),
    samples: z.array(SampleItemSchema, { error: 'must be a list of {prompt, width, height, seed, network_multiplier, ctrl_img}' }).optional(),
  }).optional(),
});

export const JobSchema = z.looseObject({
  job: z.literal('extension', { error: 'must be extension' }),
  config: z.looseObject({
    name: z.string({ error: 'must be text' }).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, {
      error: 'must be a folder-safe name: letters, digits, . _ - (no spaces or slashes), starting with a letter or digit',
    }),
    process: z.array(ProcessSchema, { error: 'must be a list with one trainer process' }).min(1, { error: 'must have one trainer process' }),
  }, { error: 'must be a mapping with name: and process:' }),
  meta: z.record(z.string(), z.unknown(), { error: 'must be a mapping' }).optional(),
});
