#include "train/data.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "core/common.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace graft {

// Streams of Rng(seed, stream, index). Dataset d's plan uses kStreamShuffle + d * kStreamDatasetStride,
// so a job with one dataset (every `items` job) draws the batches it drew before datasets existed.
static const uint64_t kStreamShuffle = 0x5F;
static const uint64_t kStreamDatasetStride = 0x10000;
static const uint64_t kStreamDataset = 0xD5E7;
static const uint64_t kStreamDropout = 0xD40F;

TrainData data_load(const Job& job, const FluxConfig& cfg) {
  TrainData d;
  d.datasets.resize(1);
  for (const JobItem& it : job.items) {
    Latent lat;
    SafeTensorsFile lf = SafeTensorsFile::open(it.latent);
    const TensorInfo& li = lf.info("latent");
    if (li.shape.size() != 3)
      fail(it.latent + ": tensor 'latent' must be [C, H, W], got " + shape_str(li.shape));
    lat.C = (int)li.shape[0];
    lat.H = (int)li.shape[1];
    lat.W = (int)li.shape[2];
    if (lat.C * 4 != cfg.in_channels)
      fail(it.latent + ": latent has " + std::to_string(lat.C) + " channels but the model takes " +
           std::to_string(cfg.in_channels / 4) + " (encoded with another autoencoder?)");
    if (lat.H % 2 || lat.W % 2 || lat.H <= 0 || lat.W <= 0)
      fail(it.latent + ": latent sides must be even for 2x2 patches, got " + shape_str(li.shape));
    lat.z = lf.read_f32("latent");
    TextEmbedding t;
    SafeTensorsFile tf = SafeTensorsFile::open(it.text);
    const TensorInfo& ti = tf.info("txt");
    if (ti.shape.size() != 2 || ti.shape[1] != cfg.context_dim)
      fail(it.text + ": tensor 'txt' must be [L, " + std::to_string(cfg.context_dim) + "], got " + shape_str(ti.shape));
    t.L = (int)ti.shape[0];
    t.txt = tf.read_f32("txt");
    t.y = tf.read_f32("y", {cfg.vec_dim});
    TrainSample s;
    s.latent = (int)d.latents.size();
    s.text = s.dropout_text = (int)d.texts.size();
    d.latents.push_back(std::move(lat));
    d.texts.push_back(std::move(t));
    d.samples.push_back(s);
    d.add_to_dataset(0, (int)d.samples.size() - 1);
  }
  return d;
}

void TrainData::add_to_dataset(int d, int s) {
  if ((int)datasets.size() <= d) datasets.resize(d + 1);
  TrainDataset& ds = datasets[d];
  const Latent& l = latents[samples[s].latent];
  const int L = texts[samples[s].text].L;
  // Buckets in order of first appearance; an item joins the first bucket of its shape.
  for (auto& b : ds.buckets) {
    const TrainSample& o = samples[b[0]];
    const Latent& ol = latents[o.latent];
    if (ol.C == l.C && ol.H == l.H && ol.W == l.W && (ragged_text || texts[o.text].L == L)) {
      b.push_back(s);
      return;
    }
  }
  ds.buckets.push_back({s});
}

size_t TrainData::bucket_count() const {
  size_t n = 0;
  for (const auto& d : datasets) n += d.buckets.size();
  return n;
}

int TrainData::batches_per_epoch(int d, int bs) const {
  int n = 0;
  for (const auto& b : datasets[d].buckets) {
    int items = 0;
    for (int s : b) items += samples[s].repeats;
    n += (items + bs - 1) / bs;
  }
  return n;
}

int TrainData::batches_per_epoch(int bs) const {
  int n = 0;
  for (size_t d = 0; d < datasets.size(); ++d) n += batches_per_epoch((int)d, bs);
  return n;
}

int TrainData::dataset_of(uint64_t seed, uint64_t g) const {
  if (datasets.size() == 1) return 0;
  double total = 0.0;
  for (const auto& d : datasets) total += d.weight;
  Rng rng(seed, kStreamDataset, g);
  const double u = (double)(rng.next() >> 11) * (1.0 / 9007199254740992.0) * total;  // [0, total)
  double acc = 0.0;
  for (size_t d = 0; d < datasets.size(); ++d) {
    acc += datasets[d].weight;
    if (u < acc) return (int)d;
  }
  return (int)datasets.size() - 1;  // u rounded up to total
}

uint64_t TrainData::position(uint64_t seed, uint64_t g, int d) const {
  if (datasets.size() == 1) return g;
  if (memo_count_.size() != datasets.size() || memo_seed_ != seed || memo_g_ > g) {
    memo_count_.assign(datasets.size(), 0);
    memo_seed_ = seed;
    memo_g_ = 0;
  }
  for (; memo_g_ < g; ++memo_g_) ++memo_count_[dataset_of(seed, memo_g_)];
  return memo_count_[d];
}

static void shuffle(std::vector<int>& v, Rng& rng) {  // Fisher-Yates with our own generator
  for (int i = (int)v.size() - 1; i > 0; --i) std::swap(v[i], v[rng.next() % (uint64_t)(i + 1)]);
}

BatchPick TrainData::batch(uint64_t seed, uint64_t g, int bs) const {
  BatchPick pick;
  pick.dataset = dataset_of(seed, g);
  const TrainDataset& ds = datasets[pick.dataset];
  const uint64_t nb = (uint64_t)batches_per_epoch(pick.dataset, bs);
  const uint64_t pos = position(seed, g, pick.dataset);
  pick.epoch = pos / nb;
  Rng rng(seed, kStreamShuffle + (uint64_t)pick.dataset * kStreamDatasetStride, pick.epoch);
  std::vector<std::vector<int>> plan;
  for (const auto& bucket : ds.buckets) {
    std::vector<int> order;
    for (int s : bucket) order.insert(order.end(), samples[s].repeats, s);
    shuffle(order, rng);
    for (size_t i = 0; i < order.size(); i += bs)
      plan.emplace_back(order.begin() + i, order.begin() + std::min(order.size(), i + bs));
  }
  std::vector<int> idx(plan.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = (int)i;
  shuffle(idx, rng);
  pick.samples = plan[idx[pos % nb]];
  for (size_t slot = 0; slot < pick.samples.size(); ++slot) {
    const TrainSample& s = samples[pick.samples[slot]];
    bool drop = false;
    if (ds.dropout_rate > 0.0f) {
      Rng r(seed, kStreamDropout + ((uint64_t)slot << 20), g);
      drop = r.uniform() < ds.dropout_rate;
    }
    pick.dropped.push_back(drop);
    pick.texts.push_back(drop ? s.dropout_text : s.text);
  }
  return pick;
}

}  // namespace graft
