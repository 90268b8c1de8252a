// SentencePiece's precompiled_charsmap: the normalization rules a SentencePiece model carries (in its
// normalizer_spec, and base64 in a tokenizer.json's Precompiled normalizer), in the form both
// sentencepiece and the tokenizers library read. The blob is a little-endian uint32 (the trie's size
// in bytes), a darts-clone double-array trie over the rules' UTF-8 keys, then the replacements, each
// NUL-terminated; a key's leaf holds the byte offset of its replacement.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace graft {

// One rule: a character (its UTF-8 bytes) and what it becomes (maybe nothing).
using CharRule = std::pair<std::string, std::string>;

// The blob for `rules`. Fails on an empty key, a key holding a NUL byte, or the same key twice.
std::string precompiled_charsmap(const std::vector<CharRule>& rules);

// The rules of graft's small T5 tokenizer: the part of sentencepiece's nmt_nfkc that test captions
// meet (control characters removed, other spaces made ' ', full-width ASCII, ligatures, ellipsis,
// trade mark and superscript digits as NFKC writes them).
std::vector<CharRule> nmt_nfkc_subset_rules();

// The longest rule that is a prefix of `text`, found as sentencepiece finds it (darts-clone's
// common-prefix search): {replacement, key length}, or {"", 0} when none. For tests; fails when the
// search would read outside the trie.
std::pair<std::string, size_t> charsmap_longest_match(const std::string& blob, const std::string& text);

// The UTF-8 bytes of code point cp.
std::string utf8(char32_t cp);

}  // namespace graft
