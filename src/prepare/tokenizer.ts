// Captions to token ids with a model family's own tokenizer.json (Hugging Face format), through
// @huggingface/tokenizers. That library does not apply the file's truncation and padding settings, so they
// are applied here the way the Rust tokenizers library does: the text is cut first, leaving room for the
// special tokens the post-processor adds, then padded to the fixed length the text encoder expects.
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { PrepareError } from './errors.js';

interface TokenizerFile {
  truncation?: { max_length?: number; direction?: string } | null;
  padding?: { strategy?: { Fixed?: number } | string; direction?: string; pad_id?: number } | null;
}

export class CaptionTokenizer {
  private readonly specials: number;

  private constructor(
    private readonly tok: Tokenizer,
    readonly file: string,
    /** Every encoding has exactly this many ids. */
    readonly maxLen: number,
    private readonly padId: number,
    private readonly truncateLeft: boolean,
  ) {
    this.specials = this.postProcess([]).length;
    if (this.specials >= maxLen) throw new PrepareError(`${file}: max_length ${maxLen} leaves no room for text next to ${this.specials} special tokens`);
  }

  /** Load a tokenizer.json; maxLen comes from its fixed padding or truncation, else from fallbackMaxLen. */
  static load(file: string, fallbackMaxLen?: number): CaptionTokenizer {
    let json: TokenizerFile & Record<string, unknown>;
    try {
      json = JSON.parse(readFileSync(file, 'utf8')) as typeof json;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new PrepareError(code === 'ENOENT'
        ? `tokenizer not found: ${file} (the model folder needs its tokenizer.json)`
        : `${file}: cannot read the tokenizer: ${code ?? (err as Error).message}`);
    }
    const fixed = typeof json.padding?.strategy === 'object' ? json.padding.strategy.Fixed : undefined;
    const maxLen = fixed ?? json.truncation?.max_length ?? fallbackMaxLen;
    if (maxLen === undefined || !Number.isInteger(maxLen) || maxLen < 2) {
      throw new PrepareError(`${file}: no fixed length (padding.strategy.Fixed or truncation.max_length) and none from the model: the text encoder needs one`);
    }
    if (json.padding?.direction === 'Left') throw new PrepareError(`${file}: padding.direction Left is not supported (the text encoder reads ids from the left)`);
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, {});
    } catch (err) {
      throw new PrepareError(`${file}: not a tokenizer graft can load: ${(err as Error).message}`);
    }
    return new CaptionTokenizer(tok, file, maxLen, json.padding?.pad_id ?? 0, json.truncation?.direction === 'Left');
  }

  private postProcess(tokens: string[]): string[] {
    return this.tok.post_processor ? this.tok.post_processor(tokens, null, true).tokens : tokens;
  }

  private idOf(token: string): number {
    const id = this.tok.token_to_id(token);
    if (id === undefined) throw new PrepareError(`${this.file}: token ${JSON.stringify(token)} has no id in the vocabulary`);
    return id;
  }

  /** How many ids the text takes before truncation, special tokens included: more than maxLen means it is cut. */
  count(text: string): number {
    return this.tok.tokenize(text, { add_special_tokens: false }).length + this.specials;
  }

  /** The ids of one text: special tokens added, truncated and padded to exactly maxLen. */
  encode(text: string): number[] {
    let tokens = this.tok.tokenize(text, { add_special_tokens: false });
    const room = this.maxLen - this.specials;
    if (tokens.length > room) tokens = this.truncateLeft ? tokens.slice(tokens.length - room) : tokens.slice(0, room);
    const ids = this.postProcess(tokens).map((t) => this.idOf(t));
    while (ids.length < this.maxLen) ids.push(this.padId);
    return ids;
  }
}
