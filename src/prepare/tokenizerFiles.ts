// Where a model's tokenizers are: one per text encoder, in the order job.json lists the encoders. Model
// resolution (model.ts, flux.ts) says where the files are; textTokenizers.ts loads them.

/** special_tokens_map.json and tokenizer_config.json, when the folder has them: pad token, length, specials. */
interface TokenizerExtras {
  specialTokensMap?: string;
  tokenizerConfig?: string;
}

/** A tokenizer.json, or a BPE vocabulary as CLIPTokenizer reads it (vocab.json + merges.txt). */
export type TokenizerSource = ({ tokenizerJson: string } | { vocab: string; merges: string }) & TokenizerExtras;

/** clip: CLIP's BPE (CLIPTokenizer); t5: T5's Unigram (T5TokenizerFast); tiny: a tokenizer.json with its own fixed length. */
export type TokenizerKind = 'clip' | 't5' | 'tiny';

export interface TokenizerFiles {
  /** The encoder's key in job.json (clip_l, t5); with a single encoder it is not written. */
  name: string;
  kind: TokenizerKind;
  source: TokenizerSource;
  /** The sequence length the pipeline pads and cuts to; else the tokenizer's own. */
  maxLen?: number;
  /** Where maxLen comes from, for messages (a model.json, a variant). */
  maxLenFrom?: string;
}

/** The file that names this tokenizer in messages and in job.json: its tokenizer.json, else its vocab.json. */
export function tokenizerPath(t: TokenizerFiles): string {
  return 'tokenizerJson' in t.source ? t.source.tokenizerJson : t.source.vocab;
}
