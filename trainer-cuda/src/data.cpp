#include "data.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "common.h"
#include "rng.h"

namespace graft {

static const uint64_t kStreamShuffle = 0x5F;

TrainData data_load(const Job& job, const FluxConfig& cfg) {
  TrainData d;
  std::map<std::tuple<int, int, int, int>, int> bucket_of;
  for (const JobItem& it : job.items) {
    TrainSample s;
    SafeTensorsFile lf = SafeTensorsFile::open(it.latent);
    const TensorInfo& li = lf.info("latent");
    if (li.shape.size() != 3)
      fail(it.latent + ": tensor 'latent' must be [C, H, W], got " + shape_str(li.shape));
    s.C = (int)li.shape[0];
    s.H = (int)li.shape[1];
    s.W = (int)li.shape[2];
    if (s.C * 4 != cfg.in_channels)
      fail(it.latent + ": latent has " + std::to_string(s.C) + " channels but the model takes " +
           std::to_string(cfg.in_channels / 4) + " (encoded with another autoencoder?)");
    if (s.H % 2 || s.W % 2 || s.H <= 0 || s.W <= 0)
      fail(it.latent + ": latent sides must be even for 2x2 patches, got " + shape_str(li.shape));
    s.latent = lf.read_f32("latent");
    SafeTensorsFile tf = SafeTensorsFile::open(it.text);
    const TensorInfo& ti = tf.info("txt");
    if (ti.shape.size() != 2 || ti.shape[1] != cfg.context_dim)
      fail(it.text + ": tensor 'txt' must be [L, " + std::to_string(cfg.context_dim) + "], got " + shape_str(ti.shape));
    s.L_txt = (int)ti.shape[0];
    s.txt = tf.read_f32("txt");
    s.y = tf.read_f32("y", {cfg.vec_dim});
    auto key = std::make_tuple(s.C, s.H, s.W, s.L_txt);
    if (!bucket_of.count(key)) {
      bucket_of[key] = (int)d.buckets.size();
      d.buckets.emplace_back();
    }
    d.buckets[bucket_of[key]].push_back((int)d.samples.size());
    d.samples.push_back(std::move(s));
  }
  return d;
}

int TrainData::batches_per_epoch(int bs) const {
  int n = 0;
  for (const auto& b : buckets) n += ((int)b.size() + bs - 1) / bs;
  return n;
}

static void shuffle(std::vector<int>& v, Rng& rng) {  // Fisher-Yates with our own generator
  for (int i = (int)v.size() - 1; i > 0; --i) std::swap(v[i], v[rng.next() % (uint64_t)(i + 1)]);
}

std::vector<int> TrainData::batch(uint64_t seed, uint64_t g, int bs) const {
  const uint64_t nb = (uint64_t)batches_per_epoch(bs);
  const uint64_t epoch = g / nb, pos = g % nb;
  Rng rng(seed, kStreamShuffle, epoch);
  std::vector<std::vector<int>> plan;
  for (const auto& bucket : buckets) {
    std::vector<int> order = bucket;
    shuffle(order, rng);
    for (size_t i = 0; i < order.size(); i += bs)
      plan.emplace_back(order.begin() + i, order.begin() + std::min(order.size(), i + bs));
  }
  std::vector<int> idx(plan.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = (int)i;
  shuffle(idx, rng);
  return plan[idx[pos]];
}

}  // namespace graft
