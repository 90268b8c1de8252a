// Which model files a job trains on. Only families graft's trainer runs can be prepared: today the built-in
// demo model (graft_tiny, FLUX layout). Its name_or_path is a folder holding transformer, text encoder,
// autoencoder, tokenizer.json and model.json; a relative path is looked up in the graft package first
// (presets/graft-tiny), then next to the config file.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { expandHome, packageRoot } from '../paths.js';
import type { Preset } from '../presets.js';
import { PrepareError } from './errors.js';
import type { TokenizerFiles } from './tokenizerFiles.js';

/** Families preparation can resolve, with the architecture name the trainer reads (model.arch in job.json). */
const TRAINER_ARCH: Record<string, string> = { graft_tiny: 'flux' };

export interface ModelFiles {
  arch: string;
  name_or_path: string;
  folder: string;
  transformer: string;
  text_encoder: string;
  ae: string;
  /** One per text encoder, in the order job.json lists them. */
  tokenizers: TokenizerFiles[];
}

function modelFolder(nameOrPath: string, configDir: string): string | undefined {
  const p = expandHome(nameOrPath);
  const candidates = isAbsolute(p) ? [p] : [join(packageRoot(), p), join(packageRoot(), 'presets', p), resolve(configDir, p)];
  return candidates.find((c) => existsSync(c) && statSync(c).isDirectory());
}

export function resolveModel(preset: Preset | undefined, model: Record<string, unknown>, configPath: string): ModelFiles {
  const where = 'config.process[0].model';
  if (!preset) throw new PrepareError(`${configPath}: ${where}.arch ${JSON.stringify(model.arch)} is not a model family graft knows (graft validate lists them)`);
  const arch = TRAINER_ARCH[preset.family];
  if (!arch) {
    throw new PrepareError(`${configPath}: graft cannot prepare ${preset.label} jobs yet (trainer support: ${preset.trainer_support}); ` +
      'today only the built-in demo model (arch graft_tiny) runs end to end');
  }
  const nameOrPath = typeof model.name_or_path === 'string' && model.name_or_path.trim() !== '' ? model.name_or_path : preset.name_or_path;
  const folder = modelFolder(nameOrPath, dirname(configPath));
  if (!folder) throw new PrepareError(`${configPath}: ${where}.name_or_path ${JSON.stringify(nameOrPath)}: no such model folder (looked in ${packageRoot()} and next to the config)`);
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
    arch,
    name_or_path: nameOrPath,
    folder,
    transformer: join(folder, files.transformer),
    text_encoder: join(folder, files.text_encoder),
    ae: join(folder, files.ae),
    tokenizers: [{
      name: 'text', kind: 'tiny', source: { tokenizerJson: join(folder, files.tokenizer) },
      ...(textMaxLen !== undefined ? { maxLen: textMaxLen, maxLenFrom: `text_max_len of ${join(folder, 'model.json')}` } : {}),
    }],
  };
}
