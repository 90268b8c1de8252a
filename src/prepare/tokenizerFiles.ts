// Where a model's tokenizers are: one per text encoder, in the order job.json lists the encoders. Model
// resolution (model.ts, flux.ts) says where the files are; textTokenizers.ts loads them.

/** special_tokens_map.json and tokenizer_config.json, when the folder has them: pad token, length, specials. */
interface TokenizerExtras {
  specialTokensMap?: string;
  tokenizerConfig?: string;
  /** chat_template.jinja, when the folder has one: it wins over tokenizer_config.json's chat_template (as in transformers). */
  chatTemplate?: string;
}

/** A tokenizer.json, or a BPE vocabulary as CLIPTokenizer reads it (vocab.json + merges.txt). */
export type TokenizerSource = ({ tokenizerJson: string } | { vocab: string; merges: string }) & TokenizerExtras;

/**
 * clip: CLIP's BPE (CLIPTokenizer); t5: T5's Unigram (T5TokenizerFast); qwen: Qwen's byte-level BPE, each caption
 * first rendered through the folder's chat template (qwenTokenizer.ts); tiny: a tokenizer.json with its own fixed length.
 */
export type TokenizerKind = 'clip' | 't5' | 'qwen' | 'tiny';

/** How a caption becomes a chat before it is tokenized: one user message, the generation prompt opened. */
export interface ChatOptions {
  /** The template's enable_thinking (Qwen3's switch; ZImagePipeline passes true). */
  enableThinking: boolean;
}

export interface TokenizerFiles {
  /** The encoder's key in job.json (clip_l, t5); with a single encoder it is not written. */
  name: string;
  kind: TokenizerKind;
  source: TokenizerSource;
  /** The sequence length the pipeline pads and cuts to; else the tokenizer's own. */
  maxLen?: number;
  /** Where maxLen comes from, for messages (a model.json, a variant). */
  maxLenFrom?: string;
  /** qwen: the chat each caption is rendered as. */
  chat?: ChatOptions;
  /**
   * The text encoder reads a prompt only up to its last id that is not the pad id (an attention mask, as
   * Qwen3 runs in ZImagePipeline): job.json gives it the pad id (text.encoders.<name>.pad_id).
   */
  masksPadding?: boolean;
}

/** The file that names this tokenizer in messages and in job.json: its tokenizer.json, else its vocab.json. */
export function tokenizerPath(t: TokenizerFiles): string {
  return 'tokenizerJson' in t.source ? t.source.tokenizerJson : t.source.vocab;
}
