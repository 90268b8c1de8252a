// Small tokenizer folders made by the project, in the real files' formats, for tests and random model
// folders (these machines reach no model hub, and no third-party vocabulary is copied in). Both
// vocabularies are built from the same few dozen caption words, so test captions tokenize into
// several real tokens; both are deterministic.
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

}  // namespace graft
