// Which files of a Hub repo a job needs, per model family: a table others extend with their families
// (Z-Image, Qwen-Image, ...). A family names its parts (transformer, text encoders, autoencoder, tokenizers,
// scheduler) by the files each needs in the diffusers layout, so the single-file duplicates some repos also
// carry at their root (FLUX.1-dev's flux1-dev.safetensors and ae.safetensors: 24 GB) are never fetched.
import { dirname, posix } from 'node:path';
import { matchesAny } from './glob.js';

export interface ModelPart {
  /** For messages: "transformer", "tokenizer_2". */
  name: string;
  /** Patterns (glob.ts) of every file the part is made of. */
  files: string[];
  /** What must be there for the part to load: each entry one pattern, or a list of which any one will do. */
  needs: (string | string[])[];
  /** A tokenizer (or what a tokenizer needs), fetched also by the tokenizers-only selection. */
  tokenizer?: boolean;
}

export interface FamilyFiles {
  /** The preset's family (presets/<family>.yaml). */
  family: string;
  /** Other names meaning it (the reference toolkit's model.arch). */
  aliases: string[];
  label: string;
  /** Hub repos known to hold this layout: graft download picks the family from the repo id when not told. */
  repos: RegExp[];
  parts: ModelPart[];
}

/** The weights of a diffusers folder: one file, or numbered shards with their index. */
function weights(folder: string, stem: string): string[] {
  return [`${folder}/${stem}.safetensors`, `${folder}/${stem}-[0-9]*-of-[0-9]*.safetensors`, `${folder}/${stem}.safetensors.index.json`];
}

function component(name: string, stem: string): ModelPart {
  const w = weights(name, stem);
  return { name, files: [`${name}/config.json`, ...w], needs: [`${name}/config.json`, [w[0]!, w[1]!]] };
}

const modelIndex: ModelPart = { name: 'model_index.json', files: ['model_index.json'], needs: ['model_index.json'], tokenizer: true };
const scheduler: ModelPart = { name: 'scheduler', files: ['scheduler/scheduler_config.json'], needs: ['scheduler/scheduler_config.json'] };

export const FAMILY_FILES: FamilyFiles[] = [
  {
    family: 'flux1',
    aliases: ['flux'],
    label: 'FLUX.1 (diffusers layout)',
    repos: [/^black-forest-labs\/FLUX\.1-(dev|schnell)$/i],
    parts: [
      modelIndex,
      scheduler,
      component('transformer', 'diffusion_pytorch_model'),
      component('vae', 'diffusion_pytorch_model'),
      component('text_encoder', 'model'),
      component('text_encoder_2', 'model'),
      // CLIP's BPE tokenizer: vocab.json and merges.txt (the repo has no tokenizer.json; taken when present).
      { name: 'tokenizer', files: ['tokenizer/*'], needs: ['tokenizer/vocab.json', 'tokenizer/merges.txt'], tokenizer: true },
      // T5's tokenizer: tokenizer.json, or the sentencepiece model it is made from.
      { name: 'tokenizer_2', files: ['tokenizer_2/*'], needs: [['tokenizer_2/tokenizer.json', 'tokenizer_2/spiece.model']], tokenizer: true },
    ],
  },
  {
    // Z-Image (Turbo and base): ZImagePipeline's folders. Its text encoder is Qwen3-4B (transformers'
    // model-0000N-of-0000M shards), its autoencoder FLUX.1's in diffusers names.
    family: 'zimage',
    aliases: ['zimage_turbo', 'zimage:turbo'],
    label: 'Z-Image (diffusers layout)',
    repos: [/^Tongyi-MAI\/Z-Image(-Turbo)?$/i],
    parts: [
      modelIndex,
      scheduler,
      component('transformer', 'diffusion_pytorch_model'),
      component('vae', 'diffusion_pytorch_model'),
      component('text_encoder', 'model'),
      // Qwen's byte-level BPE: tokenizer.json, and tokenizer_config.json for the chat template and the pad token.
      { name: 'tokenizer', files: ['tokenizer/*'], needs: ['tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json'], tokenizer: true },
    ],
  },
];

export function familyFiles(name: string): FamilyFiles | undefined {
  const n = name.trim().toLowerCase();
  return FAMILY_FILES.find((f) => f.family === n || f.aliases.includes(n));
}

/** The family whose known repos include this one (black-forest-labs/FLUX.1-dev -> flux1). */
export function familyForRepo(repo: string): FamilyFiles | undefined {
  return FAMILY_FILES.find((f) => f.repos.some((r) => r.test(repo)));
}

export function knownFamilies(): string {
  return FAMILY_FILES.map((f) => (f.aliases.length ? `${f.family} (${f.aliases.join(', ')})` : f.family)).join(', ');
}

const OTHER_WEIGHT_FORMATS = /\.(bin|pt|pth|ckpt|msgpack|h5|onnx|onnx_data|gguf)$/i;

/** Drops pickled, Flax, ONNX and GGUF weights from every folder that also has safetensors. */
export function preferSafetensors(files: string[]): string[] {
  const withSafetensors = new Set(files.filter((f) => f.endsWith('.safetensors')).map((f) => dirname(f)));
  return files.filter((f) => !(OTHER_WEIGHT_FORMATS.test(f) && withSafetensors.has(dirname(f))));
}

export interface FileChoice {
  /** A model family (or alias): its parts' files. */
  family?: string;
  /** With family: only its tokenizers (and model_index.json), for weights given as local files. */
  tokenizersOnly?: boolean;
  /** With family: only these parts (by name: "vae", "text_encoder"), with the tokenizers when tokenizersOnly. */
  parts?: string[];
  /** Patterns, as huggingface-cli's --include: added to the family's files. */
  include?: string[];
  /** Exact repo paths. */
  files?: string[];
}

export interface Selection {
  files: string[];
  /** What the repo lacks, one line each ("transformer: transformer/config.json"); empty when complete. */
  missing: string[];
}

function partNeeds(part: ModelPart, have: string[]): string[] {
  const lacking: string[] = [];
  for (const need of part.needs) {
    const any = Array.isArray(need) ? need : [need];
    if (!have.some((f) => matchesAny(f, any))) lacking.push(`${part.name}: ${any.join(' or ')}`);
  }
  return lacking;
}

/**
 * The files to fetch from a repo holding `repoFiles`. With nothing chosen, every file (as huggingface-cli
 * download), safetensors preferred. `missing` names what the choice needs and the repo does not have.
 */
export function selectFiles(repoFiles: string[], choice: FileChoice): Selection {
  const chosen = new Set<string>();
  const missing: string[] = [];
  if (choice.family !== undefined) {
    const fam = familyFiles(choice.family);
    if (!fam) throw new Error(`no file selection for model family ${JSON.stringify(choice.family)} (known: ${knownFamilies()})`);
    const named = choice.parts;
    const unknown = named?.filter((n) => !fam.parts.some((p) => p.name === n)) ?? [];
    if (unknown.length) throw new Error(`${fam.family} has no part ${unknown.join(', ')} (its parts: ${fam.parts.map((p) => p.name).join(', ')})`);
    const parts = choice.tokenizersOnly || named
      ? fam.parts.filter((p) => (choice.tokenizersOnly && p.tokenizer) || named?.includes(p.name))
      : fam.parts;
    const picked = preferSafetensors(repoFiles.filter((f) => parts.some((p) => matchesAny(f, p.files))));
    picked.forEach((f) => chosen.add(f));
    for (const part of parts) missing.push(...partNeeds(part, picked));
  }
  for (const pattern of choice.include ?? []) {
    const hits = repoFiles.filter((f) => matchesAny(f, [pattern]));
    if (hits.length === 0) missing.push(`--include ${pattern}: no file matches`);
    hits.forEach((f) => chosen.add(f));
  }
  for (const file of choice.files ?? []) {
    if (repoFiles.includes(file)) chosen.add(file);
    else missing.push(file);
  }
  const nothingChosen = choice.family === undefined && !choice.include?.length && !choice.files?.length;
  const files = nothingChosen ? preferSafetensors(repoFiles) : [...chosen];
  return { files: files.sort(), missing };
}

/** The shard files a `*.safetensors.index.json` names (its weight_map's values), as repo paths. */
export function indexShards(indexPath: string, indexJson: string): string[] {
  const parsed = JSON.parse(indexJson) as { weight_map?: Record<string, unknown> };
  const shards = new Set(Object.values(parsed.weight_map ?? {}).filter((v): v is string => typeof v === 'string'));
  const folder = posix.dirname(indexPath);
  return [...shards].map((s) => (folder === '.' ? s : `${folder}/${s}`)).sort();
}
