// Qwen's byte-level BPE tokenizer (Qwen3-4B: Z-Image's tokenizer/), as ZImagePipeline prompts its text
// encoder: each caption is one user message rendered through the folder's chat template
// (add_generation_prompt=True, enable_thinking=True), then tokenized with padding="max_length",
// max_length=512, truncation=True. Qwen's post-processor adds no token and truncation keeps the first
// 512 ids (the right side is cut, the end of the chat with it), padded on the right with the pad token
// (tokenizer_config.json's pad_token: <|endoftext|>, 151643 in Qwen's vocabulary).
import { ChatTemplate } from './chatTemplate.js';
import { PrepareError } from './errors.js';
import { CaptionTokenizer, readTokenizerJson } from './tokenizer.js';
import type { TokenizerFiles } from './tokenizerFiles.js';
import { tokenizerSettings } from './tokenizerSettings.js';

export function loadQwenTokenizer(t: TokenizerFiles): CaptionTokenizer {
  if (!('tokenizerJson' in t.source)) throw new PrepareError(`${t.source.vocab}: a Qwen tokenizer is read from its tokenizer.json (the folder's vocab.json and merges.txt lack the added tokens)`);
  const file = t.source.tokenizerJson;
  const json = readTokenizerJson(file, "Qwen's tokenizer.json");
  const model = json.model as { type?: unknown } | undefined;
  if (model?.type !== 'BPE') throw new PrepareError(`${file}: model.type is ${JSON.stringify(model?.type)}, not the BPE model of a Qwen tokenizer`);
  if (t.maxLen === undefined) throw new PrepareError(`${file}: no sequence length: give the pipeline's max_sequence_length`);
  const s = tokenizerSettings(t.source);
  if (s.pad === undefined) throw new PrepareError(`${t.source.tokenizerConfig ?? file}: no pad_token: the prompt is padded with it (Qwen's is <|endoftext|>)`);
  const chat = t.chat ? ChatTemplate.load(t.source) : undefined;
  const enableThinking = t.chat?.enableThinking;
  const format = chat
    ? (caption: string) => chat.render([{ role: 'user', content: caption }], { addGenerationPrompt: true, variables: { enable_thinking: enableThinking } })
    : undefined;
  return CaptionTokenizer.create(json, file, { maxLen: t.maxLen, padToken: s.pad, ...(format ? { format } : {}) });
}
