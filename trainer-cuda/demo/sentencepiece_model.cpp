// Field numbers are sentencepiece_model.proto's: ModelProto {pieces 1, trainer_spec 2,
// normalizer_spec 3}; SentencePiece {piece 1, score 2, type 3}; TrainerSpec {model_type 3 (UNIGRAM 1),
// vocab_size 4, unk_id 40, bos_id 41, eos_id 42, pad_id 43, unk_piece 45, bos_piece 46, eos_piece 47,
// pad_piece 48}; NormalizerSpec {name 1, precompiled_charsmap 2, add_dummy_prefix 3,
// remove_extra_whitespaces 4, escape_whitespaces 5}.
#include "demo/sentencepiece_model.h"

#include <cstdint>
#include <cstring>

#include "core/common.h"

namespace graft {

namespace {

enum WireType { kVarint = 0, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += (char)((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += (char)v;
}

void put_key(std::string& out, int field, WireType type) { put_varint(out, ((uint64_t)field << 3) | type); }

// int32 fields encode a negative value as its 64-bit two's complement (ten bytes), as protobuf does.
void put_int(std::string& out, int field, int64_t v) {
  put_key(out, field, kVarint);
  put_varint(out, (uint64_t)v);
}

void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

void put_float(std::string& out, int field, float v) {
  put_key(out, field, kFixed32);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  for (int i = 0; i < 4; ++i) out += (char)((bits >> (8 * i)) & 0xFF);
}

}  // namespace

std::string sentencepiece_model_proto(const SentencePieceModel& m) {
  const int n = (int)m.pieces.size();
  auto check = [&](int id, const char* what, SentencePiece::Type type, bool optional) {
    if (optional && id < 0) return;
    if (id < 0 || id >= n || m.pieces[id].type != type)
      fail(std::string("sentencepiece model: ") + what + " " + std::to_string(id) + " is not a piece of its type");
  };
  check(m.unk_id, "unk_id", SentencePiece::kUnknown, false);
  check(m.bos_id, "bos_id", SentencePiece::kControl, true);
  check(m.eos_id, "eos_id", SentencePiece::kControl, true);
  check(m.pad_id, "pad_id", SentencePiece::kControl, true);

  std::string out;
  for (const SentencePiece& p : m.pieces) {
    std::string piece;
    put_bytes(piece, 1, p.piece);
    put_float(piece, 2, p.score);
    put_int(piece, 3, p.type);
    put_bytes(out, 1, piece);
  }
  std::string trainer;
  put_int(trainer, 3, 1);  // UNIGRAM
  put_int(trainer, 4, n);
  put_int(trainer, 40, m.unk_id);
  put_int(trainer, 41, m.bos_id);
  put_int(trainer, 42, m.eos_id);
  put_int(trainer, 43, m.pad_id);
  put_bytes(trainer, 45, m.pieces[m.unk_id].piece);
  if (m.bos_id >= 0) put_bytes(trainer, 46, m.pieces[m.bos_id].piece);
  if (m.eos_id >= 0) put_bytes(trainer, 47, m.pieces[m.eos_id].piece);
  if (m.pad_id >= 0) put_bytes(trainer, 48, m.pieces[m.pad_id].piece);
  put_bytes(out, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, m.normalizer_name);
  if (!m.precompiled_charsmap.empty()) put_bytes(normalizer, 2, m.precompiled_charsmap);
  put_int(normalizer, 3, m.add_dummy_prefix);
  put_int(normalizer, 4, m.remove_extra_whitespaces);
  put_int(normalizer, 5, m.escape_whitespaces);
  put_bytes(out, 3, normalizer);
  return out;
}

}  // namespace graft
