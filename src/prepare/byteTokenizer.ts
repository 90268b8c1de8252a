// The demo model's tokenizer (presets/graft-tiny/tokenizer.json) in the Hugging Face tokenizers format.
// It reproduces the trainer's byte-level rule (trainer-cuda/demo/text_encoder.cpp tokenize_bytes):
// 0 pad, 1 bos, 2 eos, 3 + b for each UTF-8 byte b; [bos] bytes [eos], truncated to max_len keeping eos, padded.
// Expressed as ByteLevel pre-tokenization without regex split (one piece: every byte becomes its byte-char),
// BPE over the 256 byte-chars with no merges (so each byte stays its own token), and a template adding bos/eos.

/** GPT-2's reversible byte <-> printable character table, which the ByteLevel pre-tokenizer uses. */
export function byteChars(): string[] {
  const printable = new Set<number>();
  for (let b = 0x21; b <= 0x7e; b++) printable.add(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.add(b);
  for (let b = 0xae; b <= 0xff; b++) printable.add(b);
  const chars: string[] = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) chars[b] = String.fromCharCode(printable.has(b) ? b : 256 + shifted++);
  return chars;
}

export const PAD_ID = 0;
export const BOS_ID = 1;
export const EOS_ID = 2;
export const BYTE0_ID = 3;

export function byteLevelTokenizerJson(maxLen: number): Record<string, unknown> {
  const vocab: Record<string, number> = { '<pad>': PAD_ID, '<s>': BOS_ID, '</s>': EOS_ID };
  byteChars().forEach((c, b) => { vocab[c] = BYTE0_ID + b; });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  const special = (id: string) => ({ SpecialToken: { id, type_id: 0 } });
  // The specials live in the vocabulary, not in added_tokens: as added tokens, a caption containing the text
  // "<s>" would be read as the special token, while the trainer encodes those characters as bytes.
  return {
    version: '1.0',
    truncation: { direction: 'Right', max_length: maxLen, strategy: 'LongestFirst', stride: 0 },
    padding: { strategy: { Fixed: maxLen }, direction: 'Right', pad_to_multiple_of: null, pad_id: PAD_ID, pad_type_id: 0, pad_token: '<pad>' },
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: {
      type: 'TemplateProcessing',
      single: [special('<s>'), { Sequence: { id: 'A', type_id: 0 } }, special('</s>')],
      pair: [special('<s>'), { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }, special('</s>')],
      special_tokens: {
        '<s>': { id: '<s>', ids: [BOS_ID], tokens: ['<s>'] },
        '</s>': { id: '</s>', ids: [EOS_ID], tokens: ['</s>'] },
      },
    },
    decoder: byteLevel,
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [],
    },
  };
}
