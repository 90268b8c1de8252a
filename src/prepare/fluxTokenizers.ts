// FLUX.1's two tokenizers in a diffusers-layout folder: tokenizer/ (CLIP ViT-L/14, the pooled vector;
// FLUX.1-dev ships vocab.json + merges.txt there, no tokenizer.json) and tokenizer_2/ (T5 v1.1 XXL, the
// per-token context; tokenizer.json). T5's length is the pipeline's max_sequence_length for the variant.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PrepareError } from './errors.js';
import type { TokenizerFiles, TokenizerSource } from './tokenizerFiles.js';

/** Where a single-file job's tokenizers come from when model.extras_name_or_path does not say: not gated, and its tokenizers are dev's. */
export const FLUX_DEFAULT_EXTRAS = 'black-forest-labs/FLUX.1-schnell';

/** max_sequence_length in the diffusers FLUX pipeline as the reference toolkit runs each variant. */
export const FLUX_T5_MAX_LEN = { dev: 512, schnell: 256 } as const;

function extras(dir: string): Pick<TokenizerSource, 'specialTokensMap' | 'tokenizerConfig'> {
  const map = join(dir, 'special_tokens_map.json'), config = join(dir, 'tokenizer_config.json');
  return { ...(existsSync(map) ? { specialTokensMap: map } : {}), ...(existsSync(config) ? { tokenizerConfig: config } : {}) };
}

function need(dir: string, file: string, what: string): string {
  const path = join(dir, file);
  if (!existsSync(path)) throw new PrepareError(`${file} is missing from ${dir} (${what})`);
  return path;
}

export function fluxTokenizers(folder: string, variant: 'dev' | 'schnell'): TokenizerFiles[] {
  const clipDir = join(folder, 'tokenizer'), t5Dir = join(folder, 'tokenizer_2');
  const clipJson = join(clipDir, 'tokenizer.json');
  const clip: TokenizerSource = existsSync(clipJson)
    ? { tokenizerJson: clipJson, ...extras(clipDir) }
    : {
      vocab: need(clipDir, 'vocab.json', "FLUX.1's CLIP tokenizer: vocab.json and merges.txt, or tokenizer.json"),
      merges: need(clipDir, 'merges.txt', "FLUX.1's CLIP tokenizer: vocab.json and merges.txt, or tokenizer.json"),
      ...extras(clipDir),
    };
  const t5: TokenizerSource = { tokenizerJson: need(t5Dir, 'tokenizer.json', "FLUX.1's T5 tokenizer"), ...extras(t5Dir) };
  return [
    { name: 'clip_l', kind: 'clip', source: clip },
    { name: 't5', kind: 't5', source: t5, maxLen: FLUX_T5_MAX_LEN[variant] },
  ];
}
