// Which model files a job trains on, from model.name_or_path. Only families graft's trainer runs (or is
// being built to run) can be prepared: the built-in demo model (graft_tiny), FLUX.1 (fluxModel.ts) and
// Z-Image (zimageModel.ts), each from a Hub id, a diffusers folder or single files. The demo's name_or_path is a folder holding transformer, text encoder, autoencoder,
// tokenizer.json and model.json; a relative path is looked up in the graft package first
// (presets/graft-tiny), then next to the config file.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { expandHome, packageRoot } from '../paths.js';
import type { Preset } from '../presets.js';
import { PrepareError } from './errors.js';
import { resolveFluxModel } from './fluxModel.js';
import type { TokenizerFiles } from './tokenizerFiles.js';
import { resolveZImageModel } from './zimageModel.js';

/** How a family samples, beyond the job's own settings (job.json's sample section). */
export interface ModelTraits {
  /** dev or schnell, for messages. */
  variant?: string;
  /** The model has a guidance embedding (FLUX.1-dev): sample.guidance_scale feeds it, and no CFG is run. */
  guidanceEmbedding: boolean;
  /** sample.guidance_scale is classifier-free guidance against the empty prompt (Z-Image; 1: none); else FLUX.1's: no CFG. */
  classifierFree?: boolean;
  /** The sampler's time shift: a number, or "resolution" (FLUX's, for each sample's size). */
  sampleShift: number | 'resolution';
  /** The static time shift `shift` timesteps train with (Z-Image's scheduler: 3); absent: FLUX's resolution shift. */
  trainShift?: number;
  /** The variant's sampling defaults (Z-Image Turbo: 8 steps, no CFG), where the YAML sets none. */
  sampleDefaults?: { sample_steps: number; guidance_scale: number };
}

export interface ModelFiles {
  arch: string;
  name_or_path: string;
  /** Where the files are, for messages. */
  folder: string;
  transformer: string;
  ae: string;
  /** Text encoder weights by the name job.json gives them: text_encoder alone (the demo's), or clip_l and t5. */
  textEncoders: Record<string, string>;
  /** One per text encoder, in the order job.json lists them. */
  tokenizers: TokenizerFiles[];
  traits?: ModelTraits;
  /** job.json's model.variant, for a family whose trainer behaves per variant (Z-Image: turbo or base). */
  variant?: string;
  /** The text encoder's config.json when its weights are a single file that carries none (Z-Image's Qwen3). */
  textEncoderConfig?: string;
  /** The assistant LoRA the job trains through (model.assistant_lora_path, resolved to a file). */
  assistantLora?: string;
}

export interface ResolveOptions {
  /** Lines for the job's log: download progress. */
  log?: (line: string) => void;
  /** Stops a download (what arrived is kept). */
  signal?: AbortSignal;
  /** Use the Hugging Face cache only, never the network (the Datasets screen's caption counter). */
  offline?: boolean;
  /** Where HF_* variables are read (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export type ModelResolver = (preset: Preset | undefined, model: Record<string, unknown>, configPath: string, opts?: ResolveOptions) => Promise<ModelFiles>;

function demoFolder(nameOrPath: string, configDir: string): string | undefined {
  const p = expandHome(nameOrPath);
  const candidates = isAbsolute(p) ? [p] : [join(packageRoot(), p), join(packageRoot(), 'presets', p), resolve(configDir, p)];
  return candidates.find((c) => existsSync(c) && statSync(c).isDirectory());
}

function resolveDemo(nameOrPath: string, configPath: string): ModelFiles {
  const folder = demoFolder(nameOrPath, dirname(configPath));
  if (!folder) throw new PrepareError(`${configPath}: config.process[0].model.name_or_path ${JSON.stringify(nameOrPath)}: no such model folder (looked in ${packageRoot()} and next to the config)`);
  const files = { transformer: 'transformer.safetensors', text_encoder: 'text_encoder.safetensors', ae: 'ae.safetensors', tokenizer: 'tokenizer.json' };
  for (const [part, file] of Object.entries(files)) {
    if (!existsSync(join(folder, file))) throw new PrepareError(`${folder}: the ${part.replace('_', ' ')} is missing (${file}); the model folder is incomplete`);
  }
  let textMaxLen: number | undefined;
  try {
    const info = JSON.parse(readFileSync(join(folder, 'model.json'), 'utf8')) as { text_max_len?: unknown };
    if (typeof info.text_max_len === 'number') textMaxLen = info.text_max_len;
  } catch { /* model.json is optional: the tokenizer's fixed length is used */ }
  return {
    arch: 'flux',
    name_or_path: nameOrPath,
    folder,
    transformer: join(folder, files.transformer),
    ae: join(folder, files.ae),
    textEncoders: { text_encoder: join(folder, files.text_encoder) },
    tokenizers: [{
      name: 'text', kind: 'tiny', source: { tokenizerJson: join(folder, files.tokenizer) },
      ...(textMaxLen !== undefined ? { maxLen: textMaxLen, maxLenFrom: `text_max_len of ${join(folder, 'model.json')}` } : {}),
    }],
  };
}

/** Families preparation resolves: each a function from name_or_path to the model's files. */
const RESOLVERS: Record<string, (nameOrPath: string, model: Record<string, unknown>, configPath: string, opts: ResolveOptions) => Promise<ModelFiles>> = {
  graft_tiny: async (nameOrPath, _model, configPath) => resolveDemo(nameOrPath, configPath),
  flux1: resolveFluxModel,
  zimage: resolveZImageModel,
  zimage_turbo: resolveZImageModel,
};

export const resolveModel: ModelResolver = async (preset, model, configPath, opts = {}) => {
  if (!preset) throw new PrepareError(`${configPath}: config.process[0].model.arch ${JSON.stringify(model.arch)} is not a model family graft knows (graft validate lists them)`);
  const resolver = RESOLVERS[preset.family];
  if (!resolver) {
    throw new PrepareError(`${configPath}: graft cannot prepare ${preset.label} jobs yet (trainer support: ${preset.trainer_support}); ` +
      `today it prepares ${Object.keys(RESOLVERS).join(' and ')} jobs`);
  }
  const nameOrPath = typeof model.name_or_path === 'string' && model.name_or_path.trim() !== '' ? model.name_or_path.trim() : preset.name_or_path;
  return resolver(nameOrPath, model, configPath, opts);
};
