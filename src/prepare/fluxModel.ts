// FLUX.1's files for a job, from whatever the user names in model.name_or_path:
// - a Hub id (black-forest-labs/FLUX.1-dev[@revision]): its diffusers folders, downloaded into the shared
//   Hugging Face cache (never the 24 GB single files the repo also carries);
// - a local diffusers folder (model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/,
//   tokenizer/, tokenizer_2/);
// - a single transformer file (BFL's flux1-dev.safetensors, ComfyUI's diffusion_models/*.safetensors), with
//   the autoencoder and the text encoders found beside it (ae.safetensors, clip_l.safetensors, t5xxl_*.safetensors,
//   or ComfyUI's sibling folders vae/, text_encoders/, clip/), and the tokenizers (which no single-file
//   layout ships) from model.extras_name_or_path: a diffusers folder or a Hub id, by default
//   black-forest-labs/FLUX.1-schnell (not gated, and its tokenizers are dev's).
// The variant (dev: a guidance embedding; schnell: none) comes from the transformer's tensor names. The
// trainer detects each checkpoint's layout itself; what is checked here is that every part is there.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { isRepoId, type FileChoice } from '../hub/index.js';
import { expandHome } from '../paths.js';
import { besideDirs, findBeside, isDir, listings } from './besideFiles.js';
import { PrepareError } from './errors.js';
import { FLUX_DEFAULT_EXTRAS, fluxTokenizers } from './fluxTokenizers.js';
import { hubSnapshot } from './hubSnapshot.js';
import type { ModelFiles, ResolveOptions } from './model.js';
import { folderTensorNames, safetensorsNames } from './safetensorsNames.js';

export type FluxVariant = 'dev' | 'schnell';

const COMPONENTS = { transformer: 'transformer', ae: 'vae', clip_l: 'text_encoder', t5: 'text_encoder_2' } as const;
type Component = keyof typeof COMPONENTS;

/** File names each part goes by beside a single transformer file, best first (ComfyUI's and BFL's). */
const BESIDE: Record<Exclude<Component, 'transformer'>, RegExp[]> = {
  ae: [/^ae\.safetensors$/, /^flux[-_]?(ae|vae)\.safetensors$/i, /^ae\.sft$/],
  clip_l: [/^clip_l\.safetensors$/, /^clip[-_]l.*\.safetensors$/i],
  // fp16 first: an fp8 file computes in its own precision (ComfyUI's *_scaled files with their scales).
  t5: [/^t5xxl_fp16\.safetensors$/, /^t5xxl.*fp16.*\.safetensors$/i, /^t5xxl_fp8_e4m3fn_scaled\.safetensors$/, /^t5xxl.*\.safetensors$/i, /^t5.*xxl.*\.safetensors$/i],
};
const WHAT: Record<Component, string> = {
  transformer: 'the transformer', ae: 'the autoencoder (ae.safetensors)', clip_l: 'the CLIP-L text encoder (clip_l.safetensors)', t5: 'the T5-XXL text encoder (t5xxl_*.safetensors)',
};

/** dev or schnell, from the names of a FLUX transformer's tensors (BFL, ComfyUI or diffusers). */
export function fluxVariantOf(names: string[], where: string): FluxVariant {
  const isFlux = names.some((n) => /(^|\.)double_blocks\.0\.img_attn\.qkv\.weight$/.test(n) || /(^|\.)transformer_blocks\.0\.attn\.to_q\.weight$/.test(n));
  if (!isFlux) {
    const sample = names.slice(0, 3).join(', ');
    throw new PrepareError(`${where} is not a FLUX.1 transformer: it has no double_blocks.0.img_attn.qkv.weight (BFL) or transformer_blocks.0.attn.to_q.weight (diffusers)${sample ? `; its first tensors are ${sample}` : ''}`);
  }
  return names.some((n) => /(^|\.)guidance_in\.in_layer\.weight$/.test(n) || /(^|\.)guidance_embedder\.linear_1\.weight$/.test(n)) ? 'dev' : 'schnell';
}

function fluxFiles(nameOrPath: string, folder: string, parts: Record<Component, string>, variant: FluxVariant, tokenizerFolder: string): ModelFiles {
  return {
    arch: 'flux',
    name_or_path: nameOrPath,
    folder,
    transformer: parts.transformer,
    ae: parts.ae,
    textEncoders: { clip_l: parts.clip_l, t5: parts.t5 },
    tokenizers: fluxTokenizers(tokenizerFolder, variant),
    // FLUX.1 samples as its pipeline does: no classifier-free guidance; dev's guidance_scale is the input of
    // its guidance embedding (trained at 1, the reference toolkit's default), with the resolution time shift.
    traits: variant === 'dev'
      ? { variant, guidanceEmbedding: true, sampleShift: 'resolution' }
      : { variant, guidanceEmbedding: false, sampleShift: 1 },
  };
}

/** The weights' file stem in a component folder: diffusers' for its own models, transformers' for the text encoders. */
const stemOf = (part: Component) => (part === 'transformer' || part === 'ae' ? 'diffusion_pytorch_model' : 'model');

/** The component's folder under dir (transformer/, vae/, text_encoder/, text_encoder_2/) when it holds weights. */
function componentIn(dir: string, part: Component): string | undefined {
  const sub = join(dir, COMPONENTS[part]);
  return isDir(sub) && folderTensorNames(sub, [stemOf(part)]) !== undefined ? sub : undefined;
}

/** A diffusers FLUX.1 folder (a local one, or a Hub snapshot): every component and both tokenizers. */
function fromDiffusers(nameOrPath: string, folder: string): ModelFiles {
  const parts = {} as Record<Component, string>;
  const missing: string[] = [];
  for (const part of Object.keys(COMPONENTS) as Component[]) {
    const dir = componentIn(folder, part);
    if (dir) parts[part] = dir;
    else missing.push(`${COMPONENTS[part]}/ (${stemOf(part)}.safetensors or its sharded index)`);
  }
  if (missing.length) throw new PrepareError(`${folder}: this FLUX.1 diffusers folder lacks ${missing.join(', ')}`);
  const variant = diffusersVariant(parts.transformer);
  return fluxFiles(nameOrPath, folder, parts, variant, folder);
}

function diffusersVariant(transformerDir: string): FluxVariant {
  const config = join(transformerDir, 'config.json');
  if (existsSync(config)) {
    try {
      const g = (JSON.parse(readFileSync(config, 'utf8')) as { guidance_embeds?: unknown }).guidance_embeds;
      if (typeof g === 'boolean') return g ? 'dev' : 'schnell';
    } catch { /* fall back to the names */ }
  }
  return fluxVariantOf(folderTensorNames(transformerDir, ['diffusion_pytorch_model']) ?? [], transformerDir);
}

/** A local folder with FLUX.1's tokenizer/ and tokenizer_2/, or undefined. */
const tokenizerFolder = (dir: string) => (isDir(join(dir, 'tokenizer')) && isDir(join(dir, 'tokenizer_2')) ? dir : undefined);

async function fromSingleFile(nameOrPath: string, file: string, model: Record<string, unknown>, configDir: string, opts: ResolveOptions): Promise<ModelFiles> {
  const variant = fluxVariantOf(safetensorsNames(file), file);
  const dirs = besideDirs(file);
  const listed = listings(dirs);
  const parts = { transformer: file } as Record<Component, string>;
  const lacking: Exclude<Component, 'transformer'>[] = [];
  for (const part of ['ae', 'clip_l', 't5'] as const) {
    // A file of its own, else the diffusers folder of a repo that carries both layouts (BFL's).
    const hit = findBeside(listed, BESIDE[part]) ?? componentIn(dirname(file), part);
    if (hit) parts[part] = hit;
    else lacking.push(part);
  }
  const extrasSet = typeof model.extras_name_or_path === 'string' && model.extras_name_or_path.trim() !== '';
  if (lacking.length && !extrasSet) {
    throw new PrepareError(`${file}: ${lacking.map((p) => WHAT[p]).join(', ')} ${lacking.length === 1 ? 'is' : 'are'} not beside this FLUX.1 transformer ` +
      `(looked in ${dirs.join(', ')}): put ${lacking.length === 1 ? 'it' : 'them'} there, or set model.extras_name_or_path to a FLUX.1 diffusers folder or Hub id to take ${lacking.length === 1 ? 'it' : 'them'} from`);
  }
  const localTokenizers = dirs.map(tokenizerFolder).find((d) => d !== undefined);
  if (!lacking.length && localTokenizers && !extrasSet) return fluxFiles(nameOrPath, dirname(file), parts, variant, localTokenizers);

  const extras = extrasSet ? String(model.extras_name_or_path).trim() : FLUX_DEFAULT_EXTRAS;
  const from = await extrasFolder(extras, extrasSet, lacking.map((p) => COMPONENTS[p]), configDir, opts);
  for (const part of lacking) {
    const dir = join(from, COMPONENTS[part]);
    if (!isDir(dir)) throw new PrepareError(`${file}: ${WHAT[part]} is neither beside it (looked in ${dirs.join(', ')}) nor in ${extras} (no ${dir})`);
    parts[part] = dir;
  }
  if (!tokenizerFolder(from)) throw new PrepareError(`${extras} (model.extras_name_or_path) has no tokenizer/ and tokenizer_2/ folders: FLUX.1's tokenizers are taken from there`);
  return fluxFiles(nameOrPath, dirname(file), parts, variant, from);
}

/** model.extras_name_or_path as a folder: a local one, or the Hub repo's snapshot with its tokenizers (and the named components). */
async function extrasFolder(extras: string, extrasSet: boolean, components: string[], configDir: string, opts: ResolveOptions): Promise<string> {
  if (isRepoId(extras, { baseDirs: [configDir] })) {
    const what = `FLUX.1's tokenizers${components.length ? ` and ${components.join(', ')}` : ''} come from ${extras} (model.extras_name_or_path${extrasSet ? '' : `, by default`})`;
    return download(extras, { tokenizersOnly: true, parts: components }, what, opts);
  }
  const dir = resolve(configDir, expandHome(extras));
  if (!isDir(dir)) throw new PrepareError(`model.extras_name_or_path ${JSON.stringify(extras)}: no such folder (${dir}), and not a Hub id (org/name)`);
  return dir;
}

/** A Hub repo's snapshot folder with FLUX.1's chosen files; `what` says in a failure why graft asked the Hub. */
const download = (repo: string, choice: Omit<FileChoice, 'family'>, what: string, opts: ResolveOptions) =>
  hubSnapshot(repo, { family: 'flux1', ...choice }, what, opts);

/** FLUX.1's ModelFiles from model.name_or_path (see the top of this file for what it may be). */
export async function resolveFluxModel(nameOrPath: string, model: Record<string, unknown>, configPath: string, opts: ResolveOptions = {}): Promise<ModelFiles> {
  const configDir = dirname(configPath);
  const where = `${configPath}: config.process[0].model.name_or_path ${JSON.stringify(nameOrPath)}`;
  if (isRepoId(nameOrPath, { baseDirs: [configDir] })) return fromDiffusers(nameOrPath, await download(nameOrPath, {}, `${configPath}: model.name_or_path ${nameOrPath}`, opts));
  const p = resolve(configDir, expandHome(nameOrPath));
  if (!existsSync(p)) throw new PrepareError(`${where}: no such file or folder (${p}), and not a Hub id (org/name)`);
  if (statSync(p).isFile()) {
    if (!['.safetensors', '.sft'].includes(extname(p))) throw new PrepareError(`${where}: ${basename(p)} is not a .safetensors file`);
    return fromSingleFile(nameOrPath, p, model, configDir, opts);
  }
  if (existsSync(join(p, 'model_index.json')) || isDir(join(p, 'transformer'))) return fromDiffusers(nameOrPath, p);
  const single = readdirSync(p).filter((f) => /^flux1?[-_].*\.safetensors$/i.test(f)).sort();
  if (single.length === 1) return fromSingleFile(nameOrPath, join(p, single[0]!), model, configDir, opts);
  throw new PrepareError(`${where}: ${p} is not a FLUX.1 diffusers folder (no model_index.json or transformer/)` +
    (single.length > 1 ? ` and holds several transformer files (${single.join(', ')}): name one` : ' and holds no flux1-*.safetensors: name the transformer file'));
}
