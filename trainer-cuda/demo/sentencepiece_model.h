// A SentencePiece Unigram model file (spiece.model, sentencepiece's ModelProto in protobuf's wire
// format), written with the few fields a tokenizer needs: the pieces with their scores and types,
// the special ids, and the normalizer. Real T5 tokenizer folders ship one beside tokenizer.json, and
// sentencepiece itself can load ours, which makes it an independent reference for the ids.
#pragma once
#include <string>
#include <vector>

namespace graft {

struct SentencePiece {
  enum Type { kNormal = 1, kUnknown = 2, kControl = 3 };
  std::string piece;
  float score = 0.0f;
  Type type = kNormal;
};

struct SentencePieceModel {
  std::vector<SentencePiece> pieces;  // id = index
  int unk_id = 0, bos_id = -1, eos_id = -1, pad_id = -1;
  std::string normalizer_name;
  std::string precompiled_charsmap;  // precompiled_charsmap.h; empty: no character rules
  // T5's settings: a word marker in front of the text, runs of spaces made one, spaces as U+2581.
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

// The ModelProto bytes. Fails when a special id is not a piece of the matching type.
std::string sentencepiece_model_proto(const SentencePieceModel& model);

}  // namespace graft
