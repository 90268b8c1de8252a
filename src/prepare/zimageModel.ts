// Z-Image's files for a job (Turbo and base), from whatever the user names in model.name_or_path:
// - a Hub id (Tongyi-MAI/Z-Image-Turbo[@revision]): its diffusers folders (src/hub/select.ts), downloaded into
//   the shared Hugging Face cache;
// - a local diffusers folder (model_index.json naming ZImagePipeline, transformer/, text_encoder/, vae/, tokenizer/);
// - a single transformer file (ComfyUI's diffusion_models/z_image_turbo_bf16.safetensors), with the Qwen3 text
//   encoder and the autoencoder found beside it (ComfyUI's text_encoders/qwen_3_4b.safetensors and
//   vae/ae.safetensors), and what no single-file layout ships (the tokenizer; the text encoder's config.json
//   when the encoder is a single file) from model.extras_name_or_path: a diffusers folder or a Hub id, by
//   default Tongyi-MAI/Z-Image-Turbo. Weights not beside the file come from there only when it is set, so a
//   missing 8 GB text encoder is never downloaded unasked.
// The variant decides how it samples: turbo (distilled: 8 steps, no CFG) when model.arch is zimage:turbo or
// the name says Turbo, else base (30 steps, CFG 4). The trainer detects each checkpoint's layout itself; what
// is checked here is that every part is there.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { isRepoId, type FileChoice } from '../hub/index.js';
import { expandHome } from '../paths.js';
import { resolveAssistantLora } from './assistantLora.js';
import { besideDirs, findBeside, isDir, listings } from './besideFiles.js';
import { PrepareError } from './errors.js';
import { hubSnapshot } from './hubSnapshot.js';
import type { ModelFiles, ModelTraits, ResolveOptions } from './model.js';
import { folderTensorNames, safetensorsNames } from './safetensorsNames.js';
import { ZIMAGE_DEFAULT_EXTRAS, zimageTokenizer } from './zimageTokenizers.js';

export type ZImageVariant = 'turbo' | 'base';

const COMPONENTS = { transformer: 'transformer', ae: 'vae', qwen3: 'text_encoder' } as const;
type Component = keyof typeof COMPONENTS;
type Beside = Exclude<Component, 'transformer'>;

/** File names each part goes by beside a single transformer file, best first (ComfyUI's). */
const BESIDE: Record<Beside, RegExp[]> = {
  ae: [/^ae\.safetensors$/, /^(z[-_]?image|flux)[-_]?v?ae\.safetensors$/i],
  // bf16 first: an fp8 file computes in its own precision.
  qwen3: [/^qwen_3_4b\.safetensors$/i, /^qwen[-_]?3[-_]?4b(?!.*fp8).*\.safetensors$/i, /^qwen[-_]?3[-_]?4b.*\.safetensors$/i],
};
const WHAT: Record<Component, string> = {
  transformer: 'the transformer', ae: 'the autoencoder (ae.safetensors)', qwen3: 'the Qwen3 text encoder (qwen_3_4b.safetensors)',
};

/** Z-Image's sampling, per variant: a static time shift of 3 (its scheduler's), Turbo distilled to 8 steps without CFG. */
function traitsOf(variant: ZImageVariant): ModelTraits {
  return {
    variant, guidanceEmbedding: false, classifierFree: true, sampleShift: 3, trainShift: 3,
    sampleDefaults: variant === 'turbo' ? { sample_steps: 8, guidance_scale: 1 } : { sample_steps: 30, guidance_scale: 4 },
  };
}

/**
 * Whether a transformer's tensor names are Z-Image's: the caption embedder or the context refiner (diffusers and
 * the original layout), or ComfyUI's prefixed fused attention. Else one line naming the file and its first tensors.
 */
export function checkZImageTransformer(names: string[], where: string): void {
  const ok = names.some((n) => /(^|\.)cap_embedder\.1\.weight$/.test(n) || /(^|\.)context_refiner\.0\./.test(n))
    || (names.some((n) => n.startsWith('model.diffusion_model.')) && names.some((n) => /(^|\.)layers\.0\.attention\.qkv\.weight$/.test(n)));
  if (ok) return;
  const sample = names.slice(0, 3).join(', ');
  throw new PrepareError(`${where} is not a Z-Image transformer: it has no cap_embedder.1.weight or context_refiner.0.* ` +
    `(nor ComfyUI's model.diffusion_model.layers.0.attention.qkv.weight)${sample ? `; its first tensors are ${sample}` : ''}`);
}

/** turbo when the arch or the name says so (model.arch zimage:turbo, Tongyi-MAI/Z-Image-Turbo, z_image_turbo_bf16.safetensors). */
export function zimageVariant(arch: unknown, nameOrPath: string, resolved: string): ZImageVariant {
  if (arch === 'zimage:turbo') return 'turbo';
  const named = isRepoId(nameOrPath, { baseDirs: [] }) ? nameOrPath : basename(resolved);
  // A Hub snapshot named as a folder: its repo's name is in the cache path (models--org--name/snapshots/<commit>).
  const repoInCache = /models--[^/]+(?=\/snapshots\/)/.exec(resolved)?.[0] ?? '';
  return /turbo/i.test(named) || /turbo/i.test(repoInCache) ? 'turbo' : 'base';
}

/** The weights' file stem in a component folder: diffusers' for its own models, transformers' for the text encoder. */
const stemOf = (part: Component) => (part === 'qwen3' ? 'model' : 'diffusion_pytorch_model');

/** The component's folder under dir (transformer/, vae/, text_encoder/) when it holds weights. */
function componentIn(dir: string, part: Component): string | undefined {
  const sub = join(dir, COMPONENTS[part]);
  return isDir(sub) && folderTensorNames(sub, [stemOf(part)]) !== undefined ? sub : undefined;
}

/** model_index.json's pipeline, when the folder has one: another pipeline is another family's folder. */
function checkPipeline(folder: string): void {
  const index = join(folder, 'model_index.json');
  if (!existsSync(index)) return;
  let name: unknown;
  try {
    name = (JSON.parse(readFileSync(index, 'utf8')) as { _class_name?: unknown })._class_name;
  } catch {
    throw new PrepareError(`${index}: not JSON; a Z-Image folder's model_index.json names ZImagePipeline`);
  }
  if (typeof name === 'string' && name !== 'ZImagePipeline') throw new PrepareError(`${index}: _class_name is ${name}, not ZImagePipeline: ${folder} is not a Z-Image folder`);
}

interface Parts {
  transformer: string;
  ae: string;
  qwen3: string;
  /** The text encoder's config.json, for a single-file encoder. */
  qwen3Config?: string;
}

async function zimageFiles(nameOrPath: string, folder: string, parts: Parts, tokenizerFolder: string, variant: ZImageVariant,
  model: Record<string, unknown>, configPath: string, opts: ResolveOptions): Promise<ModelFiles> {
  const lora = typeof model.assistant_lora_path === 'string' && model.assistant_lora_path.trim() !== ''
    ? await resolveAssistantLora(model.assistant_lora_path.trim(), configPath, opts) : undefined;
  return {
    arch: 'zimage',
    name_or_path: nameOrPath,
    folder,
    transformer: parts.transformer,
    ae: parts.ae,
    textEncoders: { qwen3: parts.qwen3 },
    tokenizers: [zimageTokenizer(tokenizerFolder)],
    traits: traitsOf(variant),
    variant,
    ...(parts.qwen3Config ? { textEncoderConfig: parts.qwen3Config } : {}),
    ...(lora ? { assistantLora: lora } : {}),
  };
}

/** A diffusers Z-Image folder (a local one, or a Hub snapshot): every component, the text encoder's config and the tokenizer. */
function diffusersParts(folder: string): Parts {
  checkPipeline(folder);
  const parts = {} as Parts;
  const missing: string[] = [];
  for (const part of Object.keys(COMPONENTS) as Component[]) {
    const dir = componentIn(folder, part);
    if (dir) parts[part] = dir;
    else missing.push(`${COMPONENTS[part]}/ (${stemOf(part)}.safetensors or its sharded index)`);
  }
  if (parts.qwen3 && !existsSync(join(parts.qwen3, 'config.json'))) missing.push('text_encoder/config.json (the Qwen3 text encoder\'s shape)');
  if (!isDir(join(folder, 'tokenizer'))) missing.push('tokenizer/ (tokenizer.json, tokenizer_config.json)');
  if (missing.length) {
    throw new PrepareError(`${folder}: this Z-Image diffusers folder lacks ${missing.join(', ')}: ` +
      `complete it from the model's Hub repo (graft download ${ZIMAGE_DEFAULT_EXTRAS}), or name the Hub id as model.name_or_path`);
  }
  checkZImageTransformer(folderTensorNames(parts.transformer, [stemOf('transformer')]) ?? [], parts.transformer);
  return parts;
}

async function fromSingleFile(nameOrPath: string, file: string, model: Record<string, unknown>, configPath: string, opts: ResolveOptions): Promise<ModelFiles> {
  checkZImageTransformer(safetensorsNames(file), file);
  const configDir = dirname(configPath);
  const dirs = besideDirs(file);
  const listed = listings(dirs);
  const parts = { transformer: file } as Parts;
  const lacking: Beside[] = [];
  for (const part of ['ae', 'qwen3'] as const) {
    // A file of its own, else the diffusers folder of a folder that carries both layouts.
    const hit = findBeside(listed, BESIDE[part]) ?? componentIn(dirname(file), part);
    if (hit) parts[part] = hit;
    else lacking.push(part);
  }
  const extrasSet = typeof model.extras_name_or_path === 'string' && model.extras_name_or_path.trim() !== '';
  if (lacking.length && !extrasSet) {
    const them = lacking.length === 1 ? 'it' : 'them';
    throw new PrepareError(`${file}: ${lacking.map((p) => WHAT[p]).join(', ')} ${lacking.length === 1 ? 'is' : 'are'} not beside this Z-Image transformer ` +
      `(looked in ${dirs.join(', ')}): put ${them} there, or set model.extras_name_or_path to a Z-Image diffusers folder or Hub id (${ZIMAGE_DEFAULT_EXTRAS}) to take ${them} from`);
  }
  const singleEncoder = !lacking.includes('qwen3') && statSync(parts.qwen3).isFile();
  const extras = extrasSet ? String(model.extras_name_or_path).trim() : ZIMAGE_DEFAULT_EXTRAS;
  const from = await extrasFolder(extras, extrasSet, lacking.map((p) => COMPONENTS[p]), singleEncoder, configDir, opts);
  for (const part of lacking) {
    const dir = componentIn(from, part);
    if (!dir) throw new PrepareError(`${file}: ${WHAT[part]} is neither beside it (looked in ${dirs.join(', ')}) nor in ${extras} (no weights in ${join(from, COMPONENTS[part])})`);
    parts[part] = dir;
  }
  if (singleEncoder) {
    const config = join(from, 'text_encoder', 'config.json');
    if (!existsSync(config)) throw new PrepareError(`${extras} (model.extras_name_or_path) has no text_encoder/config.json: the single-file text encoder ${parts.qwen3} carries no shape, and it is read from there`);
    parts.qwen3Config = config;
  }
  if (!isDir(join(from, 'tokenizer'))) throw new PrepareError(`${extras} (model.extras_name_or_path) has no tokenizer/ folder: Z-Image's Qwen3 tokenizer is taken from there`);
  const variant = zimageVariant(model.arch, nameOrPath, file);
  return zimageFiles(nameOrPath, dirname(file), parts, from, variant, model, configPath, opts);
}

/** model.extras_name_or_path as a folder: a local one, or the Hub repo's snapshot with its tokenizer (and the named components). */
async function extrasFolder(extras: string, extrasSet: boolean, components: string[], encoderConfig: boolean, configDir: string, opts: ResolveOptions): Promise<string> {
  if (isRepoId(extras, { baseDirs: [configDir] })) {
    const wants = [...components, ...(encoderConfig ? ['text_encoder/config.json'] : [])];
    const what = `Z-Image's tokenizer${wants.length ? ` and ${wants.join(', ')}` : ''} come from ${extras} (model.extras_name_or_path${extrasSet ? '' : ', by default'})`;
    return download(extras, { tokenizersOnly: true, parts: components, ...(encoderConfig ? { files: ['text_encoder/config.json'] } : {}) }, what, opts);
  }
  const dir = resolve(configDir, expandHome(extras));
  if (!isDir(dir)) throw new PrepareError(`model.extras_name_or_path ${JSON.stringify(extras)}: no such folder (${dir}), and not a Hub id (org/name)`);
  return dir;
}

/** A Hub repo's snapshot folder with Z-Image's chosen files; `what` says in a failure why graft asked the Hub. */
const download = (repo: string, choice: Omit<FileChoice, 'family'>, what: string, opts: ResolveOptions) =>
  hubSnapshot(repo, { family: 'zimage', ...choice }, what, opts);

/** Z-Image's ModelFiles from model.name_or_path (see the top of this file for what it may be). */
export async function resolveZImageModel(nameOrPath: string, model: Record<string, unknown>, configPath: string, opts: ResolveOptions = {}): Promise<ModelFiles> {
  const configDir = dirname(configPath);
  const where = `${configPath}: config.process[0].model.name_or_path ${JSON.stringify(nameOrPath)}`;
  if (isRepoId(nameOrPath, { baseDirs: [configDir] })) {
    const snapshot = await download(nameOrPath, {}, `${configPath}: model.name_or_path ${nameOrPath}`, opts);
    return zimageFiles(nameOrPath, snapshot, diffusersParts(snapshot), snapshot, zimageVariant(model.arch, nameOrPath, snapshot), model, configPath, opts);
  }
  const p = resolve(configDir, expandHome(nameOrPath));
  if (!existsSync(p)) throw new PrepareError(`${where}: no such file or folder (${p}), and not a Hub id (org/name)`);
  if (statSync(p).isFile()) {
    if (!['.safetensors', '.sft'].includes(extname(p))) throw new PrepareError(`${where}: ${basename(p)} is not a .safetensors file`);
    return fromSingleFile(nameOrPath, p, model, configPath, opts);
  }
  if (existsSync(join(p, 'model_index.json')) || isDir(join(p, 'transformer'))) {
    return zimageFiles(nameOrPath, p, diffusersParts(p), p, zimageVariant(model.arch, nameOrPath, p), model, configPath, opts);
  }
  const single = readdirSync(p).filter((f) => /^z[-_]?image.*\.safetensors$/i.test(f)).sort();
  if (single.length === 1) return fromSingleFile(nameOrPath, join(p, single[0]!), model, configPath, opts);
  throw new PrepareError(`${where}: ${p} is not a Z-Image diffusers folder (no model_index.json or transformer/)` +
    (single.length > 1 ? ` and holds several transformer files (${single.join(', ')}): name one` : ' and holds no z_image*.safetensors: name the transformer file'));
}
