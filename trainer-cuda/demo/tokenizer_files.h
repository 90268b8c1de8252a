// Small tokenizer folders made by the project, in the real files' formats, for tests and random model
// folders (these machines reach no model hub, and no third-party vocabulary is copied in). The
// vocabularies are built from the same few dozen caption words, so test captions tokenize into
// several real tokens; all are deterministic.
#pragma once
#include <string>

namespace graft {

// A CLIP BPE tokenizer as FLUX.1's tokenizer/ folder holds it: vocab.json, merges.txt,
// special_tokens_map.json, tokenizer_config.json (model_max_length 77), and tokenizer.json (the
// CLIPTokenizerFast form) when asked. The vocabulary is laid out as CLIP's: the 256 byte characters,
// the same with "</w>", one token per merge in merge order, then <|startoftext|> and <|endoftext|>,
// the two largest ids (CLIP's pooled output is read where the largest id sits).
void write_clip_tokenizer(const std::string& dir, bool with_tokenizer_json);
int clip_tokenizer_vocab_size();

// A T5 Unigram tokenizer as FLUX.1's tokenizer_2/ folder holds it: tokenizer.json (Precompiled
// normalizer, Metaspace, TemplateProcessing "$A </s>"), spiece.model (the same model for
// sentencepiece), special_tokens_map.json, tokenizer_config.json. Ids 0 <pad>, 1 </s>, 2 <unk>;
// no <extra_id_N> tokens (the real vocabulary's last 100, which captions never produce).
void write_t5_tokenizer(const std::string& dir);
int t5_tokenizer_vocab_size();

// A byte-level BPE tokenizer as Z-Image's tokenizer/ folder holds Qwen3's: tokenizer.json (NFC, the
// Qwen2 Split regex then ByteLevel, BPE without an unknown token), vocab.json, merges.txt and
// tokenizer_config.json (pad_token <|endoftext|>, eos_token <|im_end|>, a chat_template of the
// project's own with Qwen3's ChatML turns, add_generation_prompt and enable_thinking). Ids: the 256
// byte characters in GPT-2's order ("!" is 0), one token per merge (" word" spelled as "Ġword" for the
// caption words, then a few bare words the template writes: user, assistant, system), then the
// special tokens with the largest ids, in Qwen's order: <|endoftext|>, <|im_start|>, <|im_end|>,
// <think>, </think>. A Qwen3 text encoder reading these ids needs a vocabulary of at least
// qwen_tokenizer_vocab_size(); the pad id (<|endoftext|>) is qwen_tokenizer_pad_id().
void write_qwen_tokenizer(const std::string& dir);
int qwen_tokenizer_vocab_size();
int qwen_tokenizer_pad_id();

}  // namespace graft
