// The vocabularies come from one list of caption words. CLIP's merges spell each word left to
// right ("b a", "ba c", ..., "backgroun d</w>"), words in list order, a merge shared by an earlier word
// kept at its first rank. A word comes out whole only if no pair inside it has an earlier merge than
// the next merge of its own spelling, so longer words come first and the TypeScript tests check
// that every word encodes to its own token. T5's pieces are "▁" + each word, a few sub-words and every
// printable ASCII character, scored so that a whole word always beats its spelling; every score is
// a multiple of 1/64, exact in spiece.model's float32 and in tokenizer.json's decimal. Qwen's merges
// spell "Ġ" + each word left to right, all of them before the few bare words' merges, so a caption
// word after a space always comes out whole (every merge it needs outranks any bare word's).
#include "demo/tokenizer_files.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/common.h"
#include "core/safetensors.h"
#include "demo/precompiled_charsmap.h"
#include "demo/sentencepiece_model.h"

namespace graft {

namespace {

using ordered_json = nlohmann::ordered_json;

const char* const kWords[] = {
    "background", "portrait", "triangle", "space", "painting", "standing", "flower", "wearing", "picture", "sitting",
    "circle", "square", "yellow", "purple", "forest", "orange", "person",
    "green", "white", "black", "woman", "night", "beach", "large", "small", "photo", "style", "light", "water",
    "blue", "star", "with", "tree", "city", "dark", "grey", "pink", "bird",
    "red", "the", "and", "man", "dog", "cat", "sky", "bar", "big", "hat",
    "on", "of", "in", "at", "an", "is", "a",
};

const char* const kClipBos = "<|startoftext|>";
const char* const kClipEos = "<|endoftext|>";
const char* const kWordEnd = "</w>";
const int kClipMaxLen = 77;

// GPT-2's byte-level alphabet in CLIP's id order: the printable bytes as themselves, then the other
// bytes shifted to U+0100 and up (the ByteLevel pre-tokenizer's table).
std::vector<std::string> byte_characters() {
  std::vector<int> bytes;
  for (int b = 0x21; b <= 0x7E; ++b) bytes.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bytes.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bytes.push_back(b);
  std::vector<std::string> chars;
  for (int b : bytes) chars.push_back(utf8((char32_t)b));
  std::set<int> printable(bytes.begin(), bytes.end());
  int shifted = 0;
  for (int b = 0; b < 256; ++b)
    if (!printable.count(b)) chars.push_back(utf8((char32_t)(256 + shifted++)));
  return chars;
}

struct ClipVocab {
  std::vector<std::string> tokens;  // id = index
  std::vector<std::pair<std::string, std::string>> merges;
};

ClipVocab clip_vocab() {
  ClipVocab v;
  v.tokens = byte_characters();
  const size_t bytes = v.tokens.size();
  for (size_t i = 0; i < bytes; ++i) v.tokens.push_back(v.tokens[i] + kWordEnd);
  std::set<std::pair<std::string, std::string>> seen;
  for (const char* w : kWords) {
    const std::string word = w;  // lowercase ASCII: each byte is its own byte character
    for (size_t j = 1; j < word.size(); ++j) {
      std::pair<std::string, std::string> m{word.substr(0, j), word.substr(j, 1) + (j + 1 == word.size() ? kWordEnd : "")};
      if (!seen.insert(m).second) continue;
      v.merges.push_back(m);
      v.tokens.push_back(m.first + m.second);
    }
  }
  v.tokens.push_back(kClipBos);
  v.tokens.push_back(kClipEos);
  return v;
}

std::vector<SentencePiece> t5_pieces() {
  std::vector<SentencePiece> p = {{"<pad>", 0.0f, SentencePiece::kControl},
                                  {"</s>", 0.0f, SentencePiece::kControl},
                                  {"<unk>", 0.0f, SentencePiece::kUnknown},
                                  {"\xE2\x96\x81", -2.0f, SentencePiece::kNormal}};
  const std::string marker = "\xE2\x96\x81";  // U+2581, SentencePiece's word marker
  std::vector<std::string> words;
  for (const char* w : kWords) words.insert(words.begin(), marker + w);  // short, frequent words first
  words.push_back(marker + "A");
  words.push_back(marker + "The");
  for (size_t i = 0; i < words.size(); ++i) p.push_back({words[i], -3.0f - (float)i / 16.0f, SentencePiece::kNormal});
  const char* const subwords[] = {"ing", "ed", "er", "es", "ly"};
  for (size_t i = 0; i < 5; ++i) p.push_back({subwords[i], -7.0f - (float)i / 16.0f, SentencePiece::kNormal});
  for (int c = 0x21; c <= 0x7E; ++c) p.push_back({std::string(1, (char)c), -9.0f - (float)(c - 0x21) / 64.0f, SentencePiece::kNormal});
  return p;
}

std::string base64(const std::string& bytes) {
  static const char* const table = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = ((uint8_t)bytes[i] << 16) | ((uint8_t)bytes[i + 1] << 8) | (uint8_t)bytes[i + 2];
    for (int s = 18; s >= 0; s -= 6) out += table[(v >> s) & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = (uint8_t)bytes[i] << 16;
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = ((uint8_t)bytes[i] << 16) | ((uint8_t)bytes[i + 1] << 8);
    out += table[(v >> 18) & 63];
    out += table[(v >> 12) & 63];
    out += table[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

void write_text(const std::string& path, const std::string& text) { write_file_atomic(path, text.data(), text.size()); }

ordered_json added_token(int id, const std::string& content, bool normalized) {
  return {{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
          {"normalized", normalized}, {"special", true}};
}

// special_tokens_map.json's and tokenizer_config.json's spelling of a token.
ordered_json token_entry(const std::string& content, bool normalized) {
  return {{"content", content}, {"lstrip", false}, {"normalized", normalized}, {"rstrip", false}, {"single_word", false}};
}

ordered_json clip_tokenizer_json(const ClipVocab& v) {
  const int bos = (int)v.tokens.size() - 2, eos = (int)v.tokens.size() - 1;
  ordered_json vocab = ordered_json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  ordered_json merges = ordered_json::array();
  for (const auto& m : v.merges) merges.push_back(m.first + " " + m.second);
  const ordered_json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", {added_token(bos, kClipBos, true), added_token(eos, kClipEos, false)}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {
           {{"type", "NFC"}},
           {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", " "}},
           {{"type", "Lowercase"}}}}}},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {
           {{"type", "Split"}, {"pattern", {{"Regex", "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"}}},
            {"behavior", "Removed"}, {"invert", true}},
           byte_level}}}},
      {"post_processor", {{"type", "RobertaProcessing"}, {"sep", {kClipEos, eos}}, {"cls", {kClipBos, bos}},
                          {"trim_offsets", false}, {"add_prefix_space", false}}},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", kClipEos}, {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", kWordEnd}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merges}}},
  };
}

// Qwen's special tokens in its order (151643 to 151645, then 151667 and 151668 in the real vocabulary,
// where other added tokens sit between); the first three are "special" (skipped when decoding).
const char* const kQwenSpecials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
const int kQwenSpecialCount = 5;
const int kQwenMarkedSpecial = 3;

// Words the chat template writes at the start of a pre-token (after <|im_start|>): spelled bare.
const char* const kQwenBareWords[] = {"user", "assistant", "system"};

// Qwen2's pre-tokenizer split (transformers' Qwen2TokenizerFast): contractions, letters with one
// leading non-letter, single digits, punctuation runs, newlines, whitespace.
const char* const kQwenSplit = R"RE((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)RE";

// The chat template, written for these tests: ChatML turns as Qwen3's template writes them for plain
// text messages, with the Jinja Qwen3's uses (a reversed slice, namespaces, string tests and methods), so
// the test against Python's jinja2 covers what @huggingface/jinja must render alike. An assistant turn
// before the last user turn loses its reasoning (as Qwen3 drops old thinking); add_generation_prompt opens
// the assistant's turn, and enable_thinking false closes an empty think block there (Qwen3's switch; the
// Z-Image pipeline passes true, so nothing is added).
const char* const kQwenChatTemplate = R"JINJA({#- graft's Qwen-style chat template (graft-trainer make-tokenizers --kind qwen) -#}
{#- The last user turn that asks something (not a tool's answer), searched from the end. -#}
{%- set ns = namespace(searching=true, last_user=-1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages | length) - 1 - loop.index0 %}
    {%- set tool_answer = message.content is string and message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>') %}
    {%- if ns.searching and message.role == 'user' and not tool_answer %}
        {%- set ns.searching = false %}
        {%- set ns.last_user = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}
        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}
)JINJA";

struct QwenVocab {
  std::vector<std::string> tokens;  // id = index, the special tokens last
  std::vector<std::pair<std::string, std::string>> merges;
};

QwenVocab qwen_vocab() {
  QwenVocab v;
  v.tokens = byte_characters();
  const std::string space = utf8(0x120), newline = utf8(0x10A);  // "Ġ" and "Ċ": the bytes 0x20 and 0x0A
  std::set<std::pair<std::string, std::string>> seen;
  // Merges spelling `word` (ASCII: each byte its own character) after `prefix`, left to right.
  auto spell = [&](const std::string& prefix, const std::string& word) {
    std::string left = prefix.empty() ? word.substr(0, 1) : prefix;
    for (size_t j = prefix.empty() ? 1 : 0; j < word.size(); ++j) {
      std::pair<std::string, std::string> m{left, word.substr(j, 1)};
      left += word.substr(j, 1);
      if (!seen.insert(m).second) continue;
      v.merges.push_back(m);
      v.tokens.push_back(m.first + m.second);
    }
  };
  for (const char* w : kWords) spell(space, w);
  for (const char* w : kQwenBareWords) spell("", w);
  v.merges.push_back({newline, newline});  // "\n\n" (the empty think block) as one token
  v.tokens.push_back(newline + newline);
  for (const char* s : kQwenSpecials) v.tokens.push_back(s);
  return v;
}

ordered_json qwen_added_tokens(const QwenVocab& v) {
  ordered_json added = ordered_json::array();
  const int first = (int)v.tokens.size() - kQwenSpecialCount;
  for (int i = 0; i < kQwenSpecialCount; ++i) {
    ordered_json t = added_token(first + i, kQwenSpecials[i], false);
    t["special"] = i < kQwenMarkedSpecial;
    added.push_back(t);
  }
  return added;
}

ordered_json qwen_tokenizer_json(const QwenVocab& v) {
  ordered_json vocab = ordered_json::object();
  for (size_t i = 0; i + kQwenSpecialCount < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  ordered_json merges = ordered_json::array();
  for (const auto& m : v.merges) merges.push_back(m.first + " " + m.second);
  const ordered_json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  return {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", qwen_added_tokens(v)},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {
           {{"type", "Split"}, {"pattern", {{"Regex", kQwenSplit}}}, {"behavior", "Isolated"}, {"invert", false}},
           byte_level}}}},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab}, {"merges", merges}}},
  };
}

}  // namespace

int clip_tokenizer_vocab_size() { return (int)clip_vocab().tokens.size(); }

int t5_tokenizer_vocab_size() { return (int)t5_pieces().size(); }

void write_clip_tokenizer(const std::string& dir, bool with_tokenizer_json) {
  make_dirs(dir);
  const ClipVocab v = clip_vocab();
  const int bos = (int)v.tokens.size() - 2, eos = (int)v.tokens.size() - 1;
  // vocab.json as CLIPTokenizer saves it: keys sorted, one line.
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = 0; i < v.tokens.size(); ++i) vocab[v.tokens[i]] = i;
  write_text(dir + "/vocab.json", vocab.dump() + "\n");
  std::string merges = "#version: 0.2\n";
  for (const auto& m : v.merges) merges += m.first + " " + m.second + "\n";
  write_text(dir + "/merges.txt", merges);
  const ordered_json specials = {{"bos_token", token_entry(kClipBos, true)}, {"eos_token", token_entry(kClipEos, false)},
                                 {"pad_token", kClipEos}, {"unk_token", token_entry(kClipEos, false)}};
  write_text(dir + "/special_tokens_map.json", specials.dump(2) + "\n");
  ordered_json decoder = ordered_json::object();
  for (int id : {bos, eos}) {
    ordered_json e = token_entry(v.tokens[id], id == bos);
    e["special"] = true;
    decoder[std::to_string(id)] = e;
  }
  const ordered_json config = {{"add_prefix_space", false}, {"added_tokens_decoder", decoder}, {"bos_token", kClipBos},
                               {"clean_up_tokenization_spaces", true}, {"do_lower_case", true}, {"eos_token", kClipEos},
                               {"errors", "replace"}, {"model_max_length", kClipMaxLen}, {"pad_token", kClipEos},
                               {"tokenizer_class", "CLIPTokenizer"}, {"unk_token", kClipEos}};
  write_text(dir + "/tokenizer_config.json", config.dump(2) + "\n");
  if (with_tokenizer_json) write_text(dir + "/tokenizer.json", clip_tokenizer_json(v).dump(2) + "\n");
}

void write_t5_tokenizer(const std::string& dir) {
  make_dirs(dir);
  const std::vector<SentencePiece> pieces = t5_pieces();
  const std::string charsmap = precompiled_charsmap(nmt_nfkc_subset_rules());
  SentencePieceModel spm;
  spm.pieces = pieces;
  spm.pad_id = 0;
  spm.eos_id = 1;
  spm.unk_id = 2;
  spm.normalizer_name = "nmt_nfkc";
  spm.precompiled_charsmap = charsmap;
  write_text(dir + "/spiece.model", sentencepiece_model_proto(spm));

  const std::string marker = "\xE2\x96\x81";
  ordered_json vocab = ordered_json::array();
  for (const SentencePiece& p : pieces) vocab.push_back({p.piece, (double)p.score});
  const ordered_json metaspace = {{"type", "Metaspace"}, {"replacement", marker}, {"prepend_scheme", "always"}, {"split", true}};
  const ordered_json eos_only = {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}};
  const ordered_json seq_a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, seq_b = {{"Sequence", {{"id", "B"}, {"type_id", 0}}}};
  // What transformers' T5 converter writes: the model's character map, trailing spaces dropped, runs
  // of spaces made one word marker (sentencepiece's remove_extra_whitespaces).
  const ordered_json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", {added_token(0, "<pad>", false), added_token(1, "</s>", false), added_token(2, "<unk>", false)}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {
           {{"type", "Precompiled"}, {"precompiled_charsmap", base64(charsmap)}},
           {{"type", "Strip"}, {"strip_left", false}, {"strip_right", true}},
           {{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", marker}}}}}},
      {"pre_tokenizer", metaspace},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", {seq_a, eos_only}}, {"pair", {seq_a, eos_only, seq_b, eos_only}},
                          {"special_tokens", {{"</s>", {{"id", "</s>"}, {"ids", {1}}, {"tokens", {"</s>"}}}}}}}},
      {"decoder", metaspace},
      {"model", {{"type", "Unigram"}, {"unk_id", 2}, {"vocab", vocab}, {"byte_fallback", false}}},
  };
  write_text(dir + "/tokenizer.json", tokenizer.dump(2) + "\n");
  const ordered_json specials = {{"eos_token", token_entry("</s>", false)}, {"pad_token", token_entry("<pad>", false)},
                                 {"unk_token", token_entry("<unk>", false)}};
  write_text(dir + "/special_tokens_map.json", specials.dump(2) + "\n");
  ordered_json decoder = ordered_json::object();
  for (int id = 0; id < 3; ++id) {
    ordered_json e = token_entry(pieces[id].piece, false);
    e["special"] = true;
    decoder[std::to_string(id)] = e;
  }
  const ordered_json config = {{"add_prefix_space", true}, {"added_tokens_decoder", decoder}, {"clean_up_tokenization_spaces", true},
                               {"eos_token", "</s>"}, {"extra_ids", 0}, {"legacy", true}, {"model_max_length", 512},
                               {"pad_token", "<pad>"}, {"sp_model_kwargs", ordered_json::object()},
                               {"tokenizer_class", "T5Tokenizer"}, {"unk_token", "<unk>"}};
  write_text(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

int qwen_tokenizer_vocab_size() { return (int)qwen_vocab().tokens.size(); }

int qwen_tokenizer_pad_id() { return qwen_tokenizer_vocab_size() - kQwenSpecialCount; }

void write_qwen_tokenizer(const std::string& dir) {
  make_dirs(dir);
  const QwenVocab v = qwen_vocab();
  const ordered_json tokenizer = qwen_tokenizer_json(v);
  write_text(dir + "/tokenizer.json", tokenizer.dump(2) + "\n");
  // vocab.json and merges.txt as Qwen2Tokenizer saves them: the regular tokens only, merges after a header.
  write_text(dir + "/vocab.json", tokenizer["model"]["vocab"].dump() + "\n");
  std::string merges = "#version: 0.2\n";
  for (const auto& m : v.merges) merges += m.first + " " + m.second + "\n";
  write_text(dir + "/merges.txt", merges);
  ordered_json decoder = ordered_json::object();
  for (const ordered_json& t : tokenizer["added_tokens"]) {
    ordered_json e = token_entry(t["content"].get<std::string>(), false);
    e["special"] = t["special"];
    decoder[std::to_string(t["id"].get<int>())] = e;
  }
  const ordered_json config = {{"add_bos_token", false}, {"add_prefix_space", false}, {"added_tokens_decoder", decoder},
                               {"additional_special_tokens", {"<|im_start|>", "<|im_end|>"}}, {"bos_token", nullptr},
                               {"chat_template", kQwenChatTemplate}, {"clean_up_tokenization_spaces", false},
                               {"eos_token", "<|im_end|>"}, {"errors", "replace"}, {"model_max_length", 131072},
                               {"pad_token", "<|endoftext|>"}, {"split_special_tokens", false},
                               {"tokenizer_class", "Qwen2Tokenizer"}, {"unk_token", nullptr}};
  write_text(dir + "/tokenizer_config.json", config.dump(2) + "\n");
}

}  // namespace graft
