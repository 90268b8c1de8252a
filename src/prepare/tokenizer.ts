// Captions to a fixed number of token ids, through @huggingface/tokenizers, for one text encoder. The
// library does not apply truncation or padding, so they are applied here as a pipeline asks the
// Python tokenizers for them (padding="max_length", truncation=True): the text is cut first, leaving
// room for the special tokens the post-processor adds, then padded to the length the encoder expects.
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { PrepareError } from './errors.js';

type Obj = Record<string, unknown>;

interface TokenizerFile {
  truncation?: { max_length?: number; direction?: string } | null;
  padding?: { strategy?: { Fixed?: number } | string; direction?: string; pad_id?: number } | null;
}

/** A JSON file of a tokenizer folder; a missing or unparsable file is one line naming it and `needed`. */
export function readTokenizerJson(file: string, needed: string): Obj {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PrepareError(code === 'ENOENT' ? `tokenizer not found: ${file} (${needed})` : `${file}: cannot read the tokenizer: ${code ?? (err as Error).message}`);
  }
  try {
    const json = JSON.parse(text) as unknown;
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error('not a JSON object');
    return json as Obj;
  } catch (err) {
    throw new PrepareError(`${file}: not a tokenizer file graft can read (${(err as Error).message})`);
  }
}

/** How a text encoder reads ids: always maxLen of them, the text cut on the right (or left), padded with padToken. */
export interface FixedLength {
  maxLen: number;
  /** The pad token's id; or padToken, looked up in the vocabulary. */
  padId?: number;
  padToken?: string;
  truncateLeft?: boolean;
  /** The text as the pipeline hands it to the tokenizer (a chat template around the caption); else the text itself. */
  format?: (text: string) => string;
}

export class CaptionTokenizer {
  private readonly specials: number;
  /** The id padding fills the rest of every encoding with. */
  readonly padId: number;
  private readonly truncateLeft: boolean;
  private readonly format: (text: string) => string;

  private constructor(
    private readonly tok: Tokenizer,
    readonly file: string,
    /** Every encoding has exactly this many ids. */
    readonly maxLen: number,
    fixed: FixedLength,
  ) {
    this.specials = this.postProcess([]).length;
    if (this.specials >= maxLen) throw new PrepareError(`${file}: max_length ${maxLen} leaves no room for text next to ${this.specials} special tokens`);
    this.padId = fixed.padId ?? (fixed.padToken !== undefined ? this.idOf(fixed.padToken) : 0);
    this.truncateLeft = fixed.truncateLeft === true;
    this.format = fixed.format ?? ((text) => text);
  }

  /**
   * A tokenizer from its definition (a tokenizer.json's content, or one built to the same schema); `file`
   * names it in messages. `config` is what tokenizer_config.json gives the library (the Unigram model's
   * end-of-sequence token).
   */
  static create(definition: Obj, file: string, fixed: FixedLength, config: Obj = {}): CaptionTokenizer {
    if (!Number.isInteger(fixed.maxLen) || fixed.maxLen < 2) throw new PrepareError(`${file}: max_length ${fixed.maxLen} is not a whole number of at least 2`);
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(definition, config);
    } catch (err) {
      throw new PrepareError(`${file}: not a tokenizer graft can load: ${(err as Error).message}`);
    }
    return new CaptionTokenizer(tok, file, fixed.maxLen, fixed);
  }

  /**
   * A tokenizer.json that fixes its own length (padding.strategy.Fixed or truncation.max_length, as
   * graft-tiny's does), else fallbackMaxLen; its padding settings give the pad id and direction.
   */
  static load(file: string, fallbackMaxLen?: number): CaptionTokenizer {
    const json = readTokenizerJson(file, 'the model folder needs its tokenizer.json') as TokenizerFile & Obj;
    const fixed = typeof json.padding?.strategy === 'object' ? json.padding.strategy.Fixed : undefined;
    const maxLen = fixed ?? json.truncation?.max_length ?? fallbackMaxLen;
    if (maxLen === undefined || !Number.isInteger(maxLen) || maxLen < 2) {
      throw new PrepareError(`${file}: no fixed length (padding.strategy.Fixed or truncation.max_length) and none from the model: the text encoder needs one`);
    }
    if (json.padding?.direction === 'Left') throw new PrepareError(`${file}: padding.direction Left is not supported (the text encoder reads ids from the left)`);
    return CaptionTokenizer.create(json, file, { maxLen, padId: json.padding?.pad_id ?? 0, truncateLeft: json.truncation?.direction === 'Left' });
  }

  private postProcess(tokens: string[]): string[] {
    return this.tok.post_processor ? this.tok.post_processor(tokens, null, true).tokens : tokens;
  }

  /** A token's id; text the model could not match (a Unigram model returns it as it is) is the unknown token. */
  private idOf(token: string): number {
    const id = this.tok.token_to_id(token) ?? this.tok.model?.unk_token_id;
    if (id === undefined) throw new PrepareError(`${this.file}: token ${JSON.stringify(token)} has no id in the vocabulary, and the model no unknown token`);
    return id;
  }

  /** How many ids the text takes before truncation, special tokens included: more than maxLen means it is cut. */
  count(text: string): number {
    return this.tok.tokenize(this.format(text), { add_special_tokens: false }).length + this.specials;
  }

  /** The ids of one text: special tokens added, truncated and padded to exactly maxLen. */
  encode(text: string): number[] {
    let tokens = this.tok.tokenize(this.format(text), { add_special_tokens: false });
    const room = this.maxLen - this.specials;
    if (tokens.length > room) tokens = this.truncateLeft ? tokens.slice(tokens.length - room) : tokens.slice(0, room);
    const ids = this.postProcess(tokens).map((t) => this.idOf(t));
    while (ids.length < this.maxLen) ids.push(this.padId);
    return ids;
  }
}
