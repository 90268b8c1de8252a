// The project's small tokenizer folders: the precompiled character map's trie finds every rule the
// way sentencepiece searches it, the CLIP files hold CLIP's layout (byte characters, "</w>" forms,
// one token per merge, the special tokens last), the T5 files T5's (<pad> 0, </s> 1, <unk> 2, scores
// falling). The TypeScript tests tokenize with them, and check the T5 ids against sentencepiece.
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "demo/precompiled_charsmap.h"
#include "demo/sentencepiece_model.h"
#include "demo/tokenizer_files.h"
#include "job_fixture.h"
#include "test.h"

using namespace graft;
using graft_test::TempDir;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_file(path)); }

}  // namespace

TEST(charsmap_finds_every_rule_and_nothing_else) {
  const std::vector<CharRule> rules = nmt_nfkc_subset_rules();
  const std::string blob = precompiled_charsmap(rules);
  for (const CharRule& r : rules) {
    const auto m = charsmap_longest_match(blob, r.first + "tail");
    CHECK(m.second == r.first.size());
    CHECK(m.first == r.second);
  }
  CHECK(charsmap_longest_match(blob, utf8(0xFF32)).first == "R");  // full-width R
  CHECK(charsmap_longest_match(blob, utf8(0xFB01)).first == "fi");
  CHECK(charsmap_longest_match(blob, utf8(0x1F)).first.empty() && charsmap_longest_match(blob, utf8(0x1F)).second == 1);
  for (const std::string& plain : {std::string("a"), std::string(" "), utf8(0xE9), utf8(0x65E5), utf8(0xFF5F), utf8(0x1F31F)})
    CHECK(charsmap_longest_match(blob, plain).second == 0);
}

// Keys of one to four bytes, some prefixes of others: the longest one that starts the text wins, as
// sentencepiece's normalizer picks it, and no search reads outside the array.
TEST(charsmap_longest_match_over_random_rules) {
  Rng rng(7, 0x70C, 0);
  std::map<std::string, std::string> rules;
  while (rules.size() < 300) {
    std::string key;
    const int len = 1 + (int)(rng.uniform() * 4);
    for (int i = 0; i < len; ++i) key += (char)(1 + (int)(rng.uniform() * 6) + (rng.uniform() < 0.3 ? 0xC0 : 0x60));
    rules[key] = "v" + std::to_string(rules.size());
  }
  const std::string blob = precompiled_charsmap(std::vector<CharRule>(rules.begin(), rules.end()));
  for (const auto& [key, value] : rules) {
    const std::string text = key + "\x7f\x01";
    size_t longest = 0;
    std::string expected;
    for (size_t n = 1; n <= text.size(); ++n) {
      auto it = rules.find(text.substr(0, n));
      if (it != rules.end()) longest = n, expected = it->second;
    }
    const auto m = charsmap_longest_match(blob, text);
    CHECK(m.second == longest);
    CHECK(m.first == expected);
  }
  CHECK_THROWS(precompiled_charsmap({{"a", "x"}, {"a", "y"}}), "two rules");
  CHECK_THROWS(precompiled_charsmap({{"", "x"}}), "empty");
}

TEST(clip_tokenizer_files_have_clips_layout) {
  TempDir dir;
  write_clip_tokenizer(dir.path, true);
  const nlohmann::json vocab = read_json(dir.path + "/vocab.json");
  const int n = clip_tokenizer_vocab_size();
  CHECK((int)vocab.size() == n);
  std::vector<std::string> by_id(n);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const int id = it.value().get<int>();
    CHECK(id >= 0 && id < n && by_id[id].empty());
    by_id[id] = it.key();
  }
  // As in CLIP's vocabulary: "!" is 0, "a" 64, "a</w>" 320, the byte 0x00 shifted to U+0100 at 188.
  CHECK(by_id[0] == "!" && by_id[64] == "a" && by_id[320] == "a</w>" && by_id[188] == utf8(0x100));
  CHECK(by_id[n - 2] == "<|startoftext|>" && by_id[n - 1] == "<|endoftext|>");
  std::istringstream merges(read_file(dir.path + "/merges.txt"));
  std::string line;
  std::getline(merges, line);
  CHECK(line == "#version: 0.2");
  int k = 0;
  while (std::getline(merges, line)) {
    const size_t space = line.find(' ');
    CHECK(space != std::string::npos);
    const std::string a = line.substr(0, space), b = line.substr(space + 1);
    CHECK(vocab.contains(a) && vocab.contains(b));
    CHECK(vocab.at(a + b).get<int>() == 512 + k);  // one token per merge, in merge order
    ++k;
  }
  CHECK(512 + k + 2 == n);
  CHECK(by_id[512 + k - 1] != "" && vocab.contains("background</w>") && vocab.contains("red</w>"));

  const nlohmann::json tok = read_json(dir.path + "/tokenizer.json");
  CHECK(tok["model"]["vocab"] == vocab);
  CHECK((int)tok["model"]["merges"].size() == k);
  CHECK(tok["post_processor"]["cls"][1].get<int>() == n - 2 && tok["post_processor"]["sep"][1].get<int>() == n - 1);
  const nlohmann::json config = read_json(dir.path + "/tokenizer_config.json");
  CHECK(config["model_max_length"] == 77 && config["pad_token"] == "<|endoftext|>");
  CHECK(read_json(dir.path + "/special_tokens_map.json")["bos_token"]["content"] == "<|startoftext|>");

  TempDir plain;
  write_clip_tokenizer(plain.path, false);
  CHECK(!std::ifstream(plain.path + "/tokenizer.json"));
  CHECK(read_file(plain.path + "/vocab.json") == read_file(dir.path + "/vocab.json"));
}

TEST(t5_tokenizer_files_have_t5s_layout) {
  TempDir dir;
  write_t5_tokenizer(dir.path);
  const nlohmann::json tok = read_json(dir.path + "/tokenizer.json");
  const nlohmann::json& vocab = tok["model"]["vocab"];
  CHECK((int)vocab.size() == t5_tokenizer_vocab_size());
  CHECK(vocab[0][0] == "<pad>" && vocab[1][0] == "</s>" && vocab[2][0] == "<unk>" && tok["model"]["unk_id"] == 2);
  std::set<std::string> pieces;
  for (size_t i = 0; i < vocab.size(); ++i) {
    CHECK(pieces.insert(vocab[i][0].get<std::string>()).second);
    if (i > 3) CHECK(vocab[i][1].get<double>() < vocab[i - 1][1].get<double>());  // as sentencepiece orders them
  }
  CHECK(pieces.count("\xE2\x96\x81red") && pieces.count("\xE2\x96\x81") && pieces.count("z"));
  CHECK(tok["normalizer"]["normalizers"][0]["type"] == "Precompiled");
  CHECK(tok["pre_tokenizer"]["type"] == "Metaspace");
  CHECK(tok["post_processor"]["single"][1]["SpecialToken"]["id"] == "</s>");
  CHECK(read_json(dir.path + "/tokenizer_config.json")["pad_token"] == "<pad>");
  // The model file starts with the first piece: field 1, its length, then the piece's own field 1.
  const std::string spm = read_file(dir.path + "/spiece.model");
  CHECK(spm.size() > 1000 && spm[0] == 0x0A && spm.substr(4, 5) == "<pad>");

  SentencePieceModel bad;
  bad.pieces = {{"<unk>", 0.0f, SentencePiece::kControl}};
  CHECK_THROWS(sentencepiece_model_proto(bad), "unk_id 0");
}

// Qwen's layout: the byte characters first in GPT-2's order (as Qwen's ids 0-255), one token per merge in
// merge order, the special tokens last with <|endoftext|> the pad id; vocab.json and merges.txt agree with
// tokenizer.json, and tokenizer_config.json carries the chat template and Qwen3's special tokens.
TEST(qwen_tokenizer_files_have_qwens_layout) {
  TempDir dir;
  write_qwen_tokenizer(dir.path);
  const nlohmann::json tok = read_json(dir.path + "/tokenizer.json");
  const nlohmann::json vocab = read_json(dir.path + "/vocab.json");
  const int n = qwen_tokenizer_vocab_size(), pad = qwen_tokenizer_pad_id();
  CHECK(tok["model"]["vocab"] == vocab && (int)vocab.size() == n - 5 && pad == n - 5);
  std::vector<std::string> by_id(n - 5);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) by_id[it.value().get<int>()] = it.key();
  CHECK(by_id[0] == "!" && by_id[64] == "a" && by_id[198] == utf8(0x10A) && by_id[220] == utf8(0x120));
  const char* const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"};
  for (int i = 0; i < 5; ++i) {
    CHECK(tok["added_tokens"][i]["id"].get<int>() == pad + i && tok["added_tokens"][i]["content"] == specials[i]);
    CHECK(tok["added_tokens"][i]["special"].get<bool>() == (i < 3));
  }
  std::istringstream merges(read_file(dir.path + "/merges.txt"));
  std::string line;
  std::getline(merges, line);
  CHECK(line == "#version: 0.2");
  int k = 0;
  while (std::getline(merges, line)) {
    const size_t space = line.find(' ');
    CHECK(line == tok["model"]["merges"][k].get<std::string>());
    CHECK(vocab.at(line.substr(0, space) + line.substr(space + 1)).get<int>() == 256 + k);
    ++k;
  }
  CHECK(256 + k == n - 5 && vocab.contains(utf8(0x120) + "background") && vocab.contains("assistant"));
  CHECK(tok["pre_tokenizer"]["pretokenizers"][0]["behavior"] == "Isolated" && tok["post_processor"]["type"] == "ByteLevel");
  const nlohmann::json config = read_json(dir.path + "/tokenizer_config.json");
  CHECK(config["pad_token"] == "<|endoftext|>" && config["eos_token"] == "<|im_end|>" && config["bos_token"].is_null());
  CHECK(config["added_tokens_decoder"][std::to_string(pad)]["content"] == "<|endoftext|>");
  const std::string chat = config["chat_template"].get<std::string>();
  CHECK(chat.find("add_generation_prompt") != std::string::npos && chat.find("enable_thinking") != std::string::npos &&
        chat.find("namespace(") != std::string::npos);
}
