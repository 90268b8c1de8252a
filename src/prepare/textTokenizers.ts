// The tokenizers of all of a model's text encoders, and what job.json writes of them. The demo model's one
// encoder keeps the original form: token lists are arrays, "text" is {max_len, empty_tokens}. Every other
// model's (FLUX.1: clip_l and t5; Z-Image: qwen3) names its encoders: every token field is an object with
// one list per encoder, each exactly that encoder's max_len long (trainer-cuda/JOB_JSON.md).
import type { TokenLength } from '../datasets/checks.js';
import { loadClipTokenizer } from './clipTokenizer.js';
import { PrepareError } from './errors.js';
import { loadQwenTokenizer } from './qwenTokenizer.js';
import { loadT5Tokenizer } from './t5Tokenizer.js';
import { CaptionTokenizer } from './tokenizer.js';
import { tokenizerPath, type TokenizerFiles } from './tokenizerFiles.js';

/** One encoder's ids (a single encoder), or each encoder's by name. */
export type TokenIds = number[] | Record<string, number[]>;

export interface EncoderTokenizer {
  name: string;
  tokenizer: CaptionTokenizer;
  /** job.json gives the encoder its pad id (it masks padding: TokenizerFiles.masksPadding). */
  masksPadding: boolean;
}

function loadOne(t: TokenizerFiles): CaptionTokenizer {
  if (t.kind === 'clip') return loadClipTokenizer(t);
  if (t.kind === 't5') return loadT5Tokenizer(t);
  if (t.kind === 'qwen') return loadQwenTokenizer(t);
  if (!('tokenizerJson' in t.source)) throw new PrepareError(`${t.source.vocab}: the demo model's tokenizer is a tokenizer.json`);
  const tok = CaptionTokenizer.load(t.source.tokenizerJson, t.maxLen);
  if (t.maxLen !== undefined && tok.maxLen !== t.maxLen) {
    throw new PrepareError(`${t.source.tokenizerJson}: fixed length ${tok.maxLen} differs from the text encoder's ${t.maxLen}${t.maxLenFrom ? ` (${t.maxLenFrom})` : ''}`);
  }
  return tok;
}

export class TextTokenizers {
  private readonly cache = new Map<string, TokenIds>();

  private constructor(
    readonly encoders: EncoderTokenizer[],
    /** Token fields are objects keyed by encoder name (every model but the demo's single encoder). */
    readonly keyed: boolean,
  ) {}

  static load(files: TokenizerFiles[]): TextTokenizers {
    if (files.length === 0) throw new PrepareError('the model has no tokenizer: its text encoders cannot be given captions');
    const names = new Set<string>();
    for (const f of files) {
      if (names.has(f.name)) throw new PrepareError(`${tokenizerPath(f)}: a second tokenizer for the encoder "${f.name}"`);
      names.add(f.name);
    }
    const keyed = files.length > 1 || files[0]!.kind !== 'tiny';
    return new TextTokenizers(files.map((f) => ({ name: f.name, tokenizer: loadOne(f), masksPadding: f.masksPadding === true })), keyed);
  }

  /** Every encoder's ids of one text, padded and cut to its length. */
  encode(text: string): TokenIds {
    let ids = this.cache.get(text);
    if (!ids) {
      ids = this.keyed
        ? Object.fromEntries(this.encoders.map((e) => [e.name, e.tokenizer.encode(text)]))
        : this.encoders[0]!.tokenizer.encode(text);
      this.cache.set(text, ids);
    }
    return ids;
  }

  /** The text's length in each encoder's tokens (special tokens included), against what each reads. */
  lengths(text: string): TokenLength[] {
    return this.encoders.map((e) => ({ name: e.name, count: e.tokenizer.count(text), max: e.tokenizer.maxLen }));
  }

  /** job.json's "text": each encoder's length and the empty prompt's ids. */
  textSection(): Record<string, unknown> {
    if (!this.keyed) return { max_len: this.encoders[0]!.tokenizer.maxLen, empty_tokens: this.encode('') };
    return {
      encoders: Object.fromEntries(this.encoders.map((e) => [e.name, { max_len: e.tokenizer.maxLen, ...(e.masksPadding ? { pad_id: e.tokenizer.padId } : {}) }])),
      empty_tokens: this.encode(''),
    };
  }
}
