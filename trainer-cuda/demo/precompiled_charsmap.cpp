// The double array is built the way darts-clone lays one out, because sentencepiece and the
// tokenizers library (spm_precompiled) walk it with darts-clone's unit format and without bounds
// checks: a unit is label (bits 0-7), has-leaf (bit 8), offset (bits 10-31); a leaf unit holds a value
// with bit 31 set, so no byte matches its label. A node at position p with offset o has its children
// at (p ^ o) ^ label and its leaf at (p ^ o).
#include "demo/precompiled_charsmap.h"

#include <cstdint>
#include <deque>
#include <map>
#include <set>

#include "core/common.h"

namespace graft {

namespace {

struct TrieNode {
  std::map<uint8_t, int> children;
  int64_t value = -1;  // offset of the replacement; -1: no rule ends here
};

constexpr uint32_t kLeafBit = 1u << 8, kValueBit = 1u << 31;

uint32_t unit_offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }
uint32_t unit_label(uint32_t unit) { return unit & (kValueBit | 0xFFu); }

}  // namespace

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6));
    s += (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += (char)(0xE0 | (cp >> 12));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xF0 | (cp >> 18));
    s += (char)(0x80 | ((cp >> 12) & 0x3F));
    s += (char)(0x80 | ((cp >> 6) & 0x3F));
    s += (char)(0x80 | (cp & 0x3F));
  }
  return s;
}

std::string precompiled_charsmap(const std::vector<CharRule>& rules) {
  std::map<std::string, std::string> sorted;
  for (const CharRule& r : rules) {
    if (r.first.empty() || r.first.find('\0') != std::string::npos)
      fail("precompiled_charsmap: a rule's key is empty or holds a NUL byte");
    if (!sorted.emplace(r.first, r.second).second) fail("precompiled_charsmap: two rules for the key '" + r.first + "'");
  }
  std::string replacements;
  std::vector<TrieNode> nodes(1);
  for (const auto& [key, replacement] : sorted) {
    int n = 0;
    for (unsigned char c : key) {
      auto it = nodes[n].children.find(c);
      if (it != nodes[n].children.end()) {
        n = it->second;
      } else {
        nodes.emplace_back();
        const int child = (int)nodes.size() - 1;
        nodes[n].children[c] = child;
        n = child;
      }
    }
    nodes[n].value = (int64_t)replacements.size();
    replacements += replacement;
    replacements += '\0';
  }

  // Breadth first, each node's children go to the first free base. Bases are never shared, so a
  // lookup of a byte a node lacks lands on a free unit (label 0) or on another node's child, whose
  // label differs. The array grows in blocks of 256, which covers every position a base can reach.
  std::vector<uint32_t> units(256, 0);
  std::vector<bool> used(256, false);
  std::set<uint32_t> bases;
  std::vector<uint32_t> position(nodes.size(), 0);
  used[0] = true;
  std::deque<int> queue = {0};
  while (!queue.empty()) {
    const int n = queue.front();
    queue.pop_front();
    std::vector<uint32_t> labels;
    if (nodes[n].value >= 0) labels.push_back(0);
    for (const auto& kv : nodes[n].children) labels.push_back(kv.first);
    if (labels.empty()) continue;
    auto fits = [&](uint32_t base) {
      if (bases.count(base)) return false;
      for (uint32_t l : labels)
        if ((base ^ l) < used.size() && used[base ^ l]) return false;
      return true;
    };
    uint32_t base = 1;
    while (!fits(base)) ++base;
    const size_t needed = (size_t)(base | 0xFFu) + 1;
    if (needed > units.size()) {
      units.resize(needed, 0);
      used.resize(needed, false);
    }
    bases.insert(base);
    const uint32_t offset = position[n] ^ base;
    if (offset >= (1u << 21)) fail("precompiled_charsmap: the trie is too large for a short offset");
    units[position[n]] |= offset << 10;
    if (nodes[n].value >= 0) {
      units[position[n]] |= kLeafBit;
      units[base] = (uint32_t)nodes[n].value | kValueBit;
      used[base] = true;
    }
    for (const auto& [label, child] : nodes[n].children) {
      const uint32_t p = base ^ label;
      units[p] = label;
      used[p] = true;
      position[child] = p;
      queue.push_back(child);
    }
  }

  const uint32_t trie_bytes = (uint32_t)(units.size() * 4);
  std::string blob;
  for (int i = 0; i < 4; ++i) blob += (char)((trie_bytes >> (8 * i)) & 0xFF);
  for (uint32_t u : units)
    for (int i = 0; i < 4; ++i) blob += (char)((u >> (8 * i)) & 0xFF);
  return blob + replacements;
}

std::pair<std::string, size_t> charsmap_longest_match(const std::string& blob, const std::string& text) {
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= (uint32_t)(uint8_t)blob[at + i] << (8 * i);
    return v;
  };
  if (blob.size() < 4) fail("charsmap: shorter than its size field");
  const uint32_t trie_bytes = u32(0);
  if (trie_bytes % 4 != 0 || 4 + (size_t)trie_bytes > blob.size()) fail("charsmap: the trie size does not fit the blob");
  const size_t count = trie_bytes / 4;
  auto unit = [&](size_t pos) {
    if (pos >= count) fail("charsmap: the search left the trie (position " + std::to_string(pos) + ")");
    return u32(4 + 4 * pos);
  };
  const std::string replacements = blob.substr(4 + trie_bytes);
  std::pair<std::string, size_t> best{"", 0};
  size_t pos = unit_offset(unit(0));
  for (size_t i = 0; i < text.size() && text[i] != '\0'; ++i) {
    const uint8_t c = (uint8_t)text[i];
    pos ^= c;
    const uint32_t u = unit(pos);
    if (unit_label(u) != c) break;
    pos ^= unit_offset(u);
    if (u & kLeafBit) {
      const size_t at = unit(pos) & ~kValueBit;
      if (at >= replacements.size()) fail("charsmap: a value points past the replacements");
      best = {std::string(replacements.c_str() + at), i + 1};
    }
  }
  return best;
}

std::vector<CharRule> nmt_nfkc_subset_rules() {
  std::vector<CharRule> rules;
  auto range = [&](char32_t from, char32_t to, const std::string& replacement) {
    for (char32_t c = from; c <= to; ++c) rules.push_back({utf8(c), replacement});
  };
  // nmt: control characters go, every other space is a plain space (U+2581 too: it is the
  // tokenizer's own word marker, so text must not carry it).
  range(0x01, 0x08, "");
  range(0x0B, 0x0B, "");
  range(0x0E, 0x1F, "");
  range(0x7F, 0x7F, "");
  range(0x8F, 0x8F, "");
  range(0x9F, 0x9F, "");
  for (char32_t c : {0x09, 0x0A, 0x0C, 0x0D, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x2581, 0x3000, 0xFEFF, 0xFFFD})
    range(c, c, " ");
  range(0x2000, 0x200F, " ");
  // NFKC: full-width ASCII, the Latin ligatures, and a few compatibility characters.
  for (char32_t c = 0xFF01; c <= 0xFF5E; ++c) rules.push_back({utf8(c), utf8(c - 0xFF01 + 0x21)});
  rules.push_back({utf8(0xFB00), "ff"});
  rules.push_back({utf8(0xFB01), "fi"});
  rules.push_back({utf8(0xFB02), "fl"});
  rules.push_back({utf8(0xFB03), "ffi"});
  rules.push_back({utf8(0xFB04), "ffl"});
  rules.push_back({utf8(0x2026), "..."});
  rules.push_back({utf8(0x2122), "TM"});
  rules.push_back({utf8(0xB2), "2"});
  rules.push_back({utf8(0xB3), "3"});
  rules.push_back({utf8(0xB9), "1"});
  return rules;
}

}  // namespace graft
