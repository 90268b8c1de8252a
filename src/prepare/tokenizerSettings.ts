// What a Hugging Face tokenizer folder says beside its vocabulary: the special tokens
// (special_tokens_map.json, else tokenizer_config.json, as transformers reads them) and the length the
// model reads (tokenizer_config.json's model_max_length).
import { PrepareError } from './errors.js';
import { readTokenizerJson } from './tokenizer.js';
import type { TokenizerSource } from './tokenizerFiles.js';

export interface TokenizerSettings {
  bos?: string;
  eos?: string;
  pad?: string;
  unk?: string;
  sep?: string;
  cls?: string;
  mask?: string;
  /** additional_special_tokens (Qwen's <|im_start|>, <|im_end|>, ...). */
  additional?: string[];
  modelMaxLength?: number;
}

type Obj = Record<string, unknown>;
const TOKENS = { bos: 'bos_token', eos: 'eos_token', pad: 'pad_token', unk: 'unk_token', sep: 'sep_token', cls: 'cls_token', mask: 'mask_token' } as const;

/** A token as these files spell it: "<pad>" or {"content": "<pad>", ...}. */
function tokenOf(value: unknown, file: string, key: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && typeof (value as Obj).content === 'string') return (value as Obj).content as string;
  throw new PrepareError(`${file}: ${key} ${JSON.stringify(value)} is neither a token nor {"content": token}`);
}

export function tokenizerSettings(source: TokenizerSource): TokenizerSettings {
  const config = source.tokenizerConfig ? readTokenizerJson(source.tokenizerConfig, 'named by the model folder') : {};
  const map = source.specialTokensMap ? readTokenizerJson(source.specialTokensMap, 'named by the model folder') : {};
  const out: TokenizerSettings = {};
  for (const [field, key] of Object.entries(TOKENS) as [keyof typeof TOKENS, string][]) {
    const token = tokenOf(map[key], source.specialTokensMap ?? '', key) ?? tokenOf(config[key], source.tokenizerConfig ?? '', key);
    if (token !== undefined) out[field] = token;
  }
  const additional = map.additional_special_tokens ?? config.additional_special_tokens;
  if (Array.isArray(additional)) {
    const file = map.additional_special_tokens !== undefined ? source.specialTokensMap! : source.tokenizerConfig!;
    out.additional = additional.map((t, i) => tokenOf(t, file, `additional_special_tokens[${i}]`)).filter((t): t is string => t !== undefined);
  }
  // transformers writes a huge placeholder (1e30) when a model sets no length: that is no length.
  const length = config.model_max_length;
  if (typeof length === 'number' && Number.isInteger(length) && length >= 2 && length <= 1_000_000) out.modelMaxLength = length;
  return out;
}
