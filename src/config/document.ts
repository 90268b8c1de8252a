// The job document: the reference toolkit's YAML layout, held as a plain object so unknown keys survive.
import { COLLECTION_STYLE_FLOW, dump, load, visit } from 'js-yaml';
import type { Preset } from '../presets.js';
import { getAt, isPlainObject, setAt, type Path } from '../util/objpath.js';

export type JobDoc = Record<string, unknown>;

/** config.process[0] — graft edits the first process; further ones are kept as they are. */
export const PROC: Path = ['config', 'process', 0];
export const procPath = (...rest: (string | number)[]): Path => [...PROC, ...rest];

export const ALL_RESOLUTIONS = [256, 512, 768, 1024, 1280, 1536] as const;

export function newDatasetBlock(): Record<string, unknown> {
  return {
    folder_path: '',
    caption_ext: 'txt',
    default_caption: '',
    caption_dropout_rate: 0.05,
    resolution: [512, 768, 1024],
    cache_latents_to_disk: true,
    is_reg: false,
    network_weight: 1,
    num_repeats: 1,
    flip_x: false,
    flip_y: false,
    num_frames: 1,
    control_path: null,
  };
}

/** The process section of a new job, in the reference layout and key order (SPEC.md section 3). */
export function templateProcess(trainingFolder: string): Record<string, unknown> {
  return {
    type: 'diffusion_trainer',
    training_folder: trainingFolder,
    device: 'cuda:0',
    network: { type: 'lora', linear: 16, linear_alpha: 16, conv: 16, conv_alpha: 16, lokr_full_rank: true, lokr_factor: -1 },
    save: { dtype: 'bf16', save_every: 250, max_step_saves_to_keep: 4 },
    datasets: [newDatasetBlock()],
    train: {
      batch_size: 1,
      gradient_accumulation: 1,
      steps: 3000,
      lr: 0.0001,
      optimizer: 'adamw8bit',
      optimizer_params: { weight_decay: 0.0001 },
      lr_scheduler: 'constant',
      max_grad_norm: 1.0,
      noise_scheduler: 'flowmatch',
      timestep_type: 'sigmoid',
      content_or_style: 'balanced',
      ema_config: { use_ema: false, ema_decay: 0.99 },
      cache_text_embeddings: false,
      unload_text_encoder: false,
      diff_output_preservation: false,
      diff_output_preservation_multiplier: 1.0,
      diff_output_preservation_class: 'person',
      blank_prompt_preservation: false,
      blank_prompt_preservation_multiplier: 1.0,
      do_differential_guidance: false,
      differential_guidance_scale: 3.0,
      skip_first_sample: false,
      force_first_sample: false,
      disable_sampling: false,
      dtype: 'bf16',
      gradient_checkpointing: true,
    },
    model: {
      arch: 'flux',
      name_or_path: '',
      quantize: true,
      qtype: 'qfloat8',
      quantize_te: true,
      qtype_te: 'qfloat8',
      low_vram: false,
      layer_offloading: false,
      layer_offloading_transformer_percent: 1.0,
      layer_offloading_text_encoder_percent: 1.0,
    },
    sample: {
      sampler: 'flowmatch',
      sample_every: 250,
      width: 1024,
      height: 1024,
      seed: 42,
      walk_seed: true,
      guidance_scale: 4,
      sample_steps: 20,
      num_frames: 1,
      fps: 16,
      samples: [{ prompt: '[trigger] on a beach' }],
    },
  };
}

/** Defaults used to show (and check) a value a loaded config leaves out. */
export const DEFAULT_PROCESS = templateProcess('output');

export function newJobDoc(preset: Preset, trainingFolder: string, name = 'my_lora_v1'): JobDoc {
  const doc: JobDoc = {
    job: 'extension',
    config: { name, process: [templateProcess(trainingFolder)] },
    meta: { name: '[name]', version: '1.0' },
  };
  return applyPreset(doc, preset, undefined);
}

function leafPaths(obj: unknown, prefix: Path = []): Path[] {
  if (!isPlainObject(obj) || Object.keys(obj).length === 0) return [prefix];
  return Object.entries(obj).flatMap(([k, v]) => leafPaths(v, [...prefix, k]));
}

// Flags that older configs use instead of model.arch; they would contradict a newly chosen arch.
const LEGACY_ARCH_FLAGS = ['is_flux', 'is_xl', 'is_v2', 'is_v3', 'is_ssd', 'is_vega', 'is_pixart', 'is_pixart_sigma', 'is_auraflow', 'is_lumina2'];

/**
 * Switch the document to another family: the previous family's own defaults go back to the base template,
 * then the new family's defaults, arch and base model are set. Everything else the user set stays.
 */
export function applyPreset(doc: JobDoc, preset: Preset, previous: Preset | undefined): JobDoc {
  let next = doc;
  if (previous) {
    for (const leaf of leafPaths(previous.defaults)) {
      if (leaf.length === 0) continue;
      next = setAt(next, procPath(...(leaf as string[])), structuredClone(getAt(DEFAULT_PROCESS, leaf)));
    }
  }
  for (const leaf of leafPaths(preset.defaults)) {
    if (leaf.length === 0) continue;
    next = setAt(next, procPath(...(leaf as string[])), structuredClone(getAt(preset.defaults, leaf)));
  }
  for (const flag of LEGACY_ARCH_FLAGS) next = setAt(next, procPath('model', flag), undefined);
  next = setAt(next, procPath('model', 'arch'), preset.arch);
  next = setAt(next, procPath('model', 'name_or_path'), preset.name_or_path);
  return next;
}

export class YamlLoadError extends Error {}

/** Parse a job YAML. Shape problems are left to validation, which names paths; only unreadable YAML throws. */
export function parseJobYaml(text: string, source = 'config'): JobDoc {
  let parsed: unknown;
  try {
    parsed = load(text);
  } catch (err) {
    throw new YamlLoadError(`${source}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  if (!isPlainObject(parsed)) throw new YamlLoadError(`${source}: expected a mapping with job:, config: and meta: at the top`);
  return parsed;
}

/** Exactly the text graft saves (and the preview shows). */
export function dumpJobYaml(doc: JobDoc): string {
  return dump(doc, {
    lineWidth: -1,
    noRefs: true,
    // Lists of numbers (resolution: [512, 768, 1024]) read best on one line, as in the reference examples.
    transform: (docs) => visit(docs, (node) => {
      if (node.kind === 'sequence' && node.items.length > 0
        && node.items.every((i) => i.kind === 'scalar' && /^-?[0-9.]+$/.test(i.value))) node.style = COLLECTION_STYLE_FLOW;
    }),
  });
}
