// Z-Image's one tokenizer in a diffusers-layout folder: tokenizer/ (Qwen3's byte-level BPE: tokenizer.json,
// tokenizer_config.json with the chat template and the pad token, or a chat_template.jinja beside them). Its
// text encoder reads exactly ZImagePipeline's max_sequence_length ids and masks the padding.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PrepareError } from './errors.js';
import type { TokenizerFiles } from './tokenizerFiles.js';

/** Where a single-file job's tokenizer (and the other parts it lacks) come from when model.extras_name_or_path does not say. */
export const ZIMAGE_DEFAULT_EXTRAS = 'Tongyi-MAI/Z-Image-Turbo';

/** ZImagePipeline's max_sequence_length. */
export const ZIMAGE_MAX_LEN = 512;

/** The tokenizer/ folder's files, or one line naming what is missing. */
export function zimageTokenizer(folder: string): TokenizerFiles {
  const dir = join(folder, 'tokenizer');
  const need = (file: string) => {
    const path = join(dir, file);
    if (!existsSync(path)) throw new PrepareError(`${file} is missing from ${dir} (Z-Image's Qwen3 tokenizer: tokenizer.json and tokenizer_config.json)`);
    return path;
  };
  const jinja = join(dir, 'chat_template.jinja');
  return {
    name: 'qwen3',
    kind: 'qwen',
    source: { tokenizerJson: need('tokenizer.json'), tokenizerConfig: need('tokenizer_config.json'), ...(existsSync(jinja) ? { chatTemplate: jinja } : {}) },
    maxLen: ZIMAGE_MAX_LEN,
    maxLenFrom: "ZImagePipeline's max_sequence_length",
    chat: { enableThinking: true },
    masksPadding: true,
  };
}
