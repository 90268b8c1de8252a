// T5's Unigram tokenizer (T5 v1.1: FLUX.1's tokenizer_2/tokenizer.json), as the diffusers pipeline
// calls it: padding="max_length", max_length=max_sequence_length (512 for FLUX.1-dev, 256 for schnell),
// truncation=True, so text </s> padded with <pad> (id 0). The Precompiled normalizer, Metaspace
// pre-tokenizer ("▁" before each word) and the "$A </s>" template come from the file.
// @huggingface/tokenizers applies Precompiled as its own rules (controls removed, spaces made ' ', NFKC),
// not the file's character map; sentencepiece's nmt_nfkc map, which T5's is, does the same for
// everything but rare characters.
import { PrepareError } from './errors.js';
import { CaptionTokenizer, readTokenizerJson } from './tokenizer.js';
import type { TokenizerFiles } from './tokenizerFiles.js';
import { tokenizerSettings } from './tokenizerSettings.js';

export function loadT5Tokenizer(t: TokenizerFiles): CaptionTokenizer {
  if (!('tokenizerJson' in t.source)) throw new PrepareError(`${t.source.vocab}: a T5 tokenizer is read from its tokenizer.json, not from a vocab.json`);
  const file = t.source.tokenizerJson;
  const json = readTokenizerJson(file, "T5's tokenizer.json");
  const model = json.model as { type?: unknown } | undefined;
  if (model?.type !== 'Unigram') throw new PrepareError(`${file}: model.type is ${JSON.stringify(model?.type)}, not the Unigram model of a T5 tokenizer`);
  const s = tokenizerSettings(t.source);
  const maxLen = t.maxLen ?? s.modelMaxLength;
  if (maxLen === undefined) throw new PrepareError(`${file}: no sequence length: give the pipeline's max_sequence_length (the model's tokenizer_config.json has no model_max_length)`);
  return CaptionTokenizer.create(json, file, { maxLen, padToken: s.pad ?? '<pad>' }, { eos_token: s.eos ?? '</s>' });
}
