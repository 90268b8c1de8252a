#!/usr/bin/env python3
"""Independent check of the C++ text encoders FLUX.1 uses: PyTorch re-implementations of the T5 v1.1
encoder (transformers' T5EncoderModel: T5LayerNorm, T5Attention with bidirectional relative-position
buckets and no score scaling, T5DenseGatedActDense with gelu_new) and of the CLIP text model
(transformers' CLIPTextModel: causal attention, quick GELU, LayerNorm eps 1e-5, pooled output at the
end-of-text token), written from those definitions. The trainer's hidden states and pooled outputs
must match them in float32 tolerance.

Run: /usr/bin/python3 trainer-cuda/tests/test_text_encoders_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_TRAINER = trainer binary (default <repo>/trainer-cuda/build/graft-trainer).
Prints ok/FAIL per check, then `torch-reference: N passed, N failed`; exits non-zero on any failure.

Trainer contract exercised:
  graft-trainer text-encode t5|clip <ckpt> <ids> <outputs>     -> hidden (and CLIP's pooled)
  graft-trainer make-random t5|clip <path> [--shards N] [--prefix P] [--vocab N] [--dtype D]
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_flux_torch import CheckFailed, Work, rel_err, run_checks, run_trainer, st_read, st_write  # noqa: E402

torch.set_num_threads(1)

# max|cpp - ref| / max|ref|, ref = torch float64 on the same float32 weights. Measured: ~1e-6 on
# these models; a wrong bucket, mask or norm changes the result by 1e-2 or more.
TOL = 2e-5

# ---------------------------------------------------------------------------------------------
# T5 v1.1 encoder


def t5_bucket(rel, num_buckets, max_distance):
    """Bidirectional relative-position buckets of key - query offsets (transformers' rule, in float32)."""
    n = num_buckets // 2
    ret = (rel > 0).to(torch.long) * n
    a = rel.abs()
    max_exact = n // 2
    large = max_exact + (torch.log(a.float() / max_exact) / math.log(max_distance / max_exact)
                         * (n - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, n - 1))
    return ret + torch.where(a < max_exact, a, large)


def t5_norm(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def t5_forward(sd, ids, heads, buckets=32, max_distance=128, dtype=torch.float64):
    p = {k: torch.tensor(v, dtype=dtype) for k, v in sd.items()}
    emb = p["shared.weight"] if "shared.weight" in p else p["encoder.embed_tokens.weight"]
    ids = torch.tensor(ids, dtype=torch.long)
    B, L = ids.shape
    x = emb[ids]
    pos = torch.arange(L)
    bucket = t5_bucket(pos[None, :] - pos[:, None], buckets, max_distance)  # [query, key]
    bias = p["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"][bucket]  # [L, L, H]
    bias = bias.permute(2, 0, 1)[None]
    n_layers = 0
    while f"encoder.block.{n_layers}.layer.0.SelfAttention.q.weight" in p:
        n_layers += 1
    for i in range(n_layers):
        a = f"encoder.block.{i}.layer.0."
        h = t5_norm(x, p[a + "layer_norm.weight"])

        def heads_of(t):
            return t.view(B, L, heads, -1).transpose(1, 2)
        q, k, v = (heads_of(h @ p[a + f"SelfAttention.{n}.weight"].T) for n in "qkv")
        att = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # no 1/sqrt(d): T5's
        o = (att @ v).transpose(1, 2).reshape(B, L, -1)
        x = x + o @ p[a + "SelfAttention.o.weight"].T
        f = f"encoder.block.{i}.layer.1."
        h = t5_norm(x, p[f + "layer_norm.weight"])
        g = gelu_new(h @ p[f + "DenseReluDense.wi_0.weight"].T) * (h @ p[f + "DenseReluDense.wi_1.weight"].T)
        x = x + g @ p[f + "DenseReluDense.wo.weight"].T
    return t5_norm(x, p["encoder.final_layer_norm.weight"])


def make_t5(seed, vocab=90, d_model=48, heads=3, d_kv=8, d_ff=72, layers=2, buckets=32, embed="shared.weight"):
    g = np.random.default_rng(seed)
    inner = heads * d_kv

    def w(*shape):
        return (g.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)
    sd = {embed: g.standard_normal((vocab, d_model)).astype(np.float32)}
    for i in range(layers):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        sd[a + "layer_norm.weight"] = (1 + 0.1 * g.standard_normal(d_model)).astype(np.float32)
        for n in "qkv":
            sd[a + f"SelfAttention.{n}.weight"] = w(inner, d_model)
        sd[a + "SelfAttention.o.weight"] = w(d_model, inner)
        if i == 0:
            sd[a + "SelfAttention.relative_attention_bias.weight"] = g.standard_normal((buckets, heads)).astype(np.float32)
        sd[f + "layer_norm.weight"] = (1 + 0.1 * g.standard_normal(d_model)).astype(np.float32)
        sd[f + "DenseReluDense.wi_0.weight"] = w(d_ff, d_model)
        sd[f + "DenseReluDense.wi_1.weight"] = w(d_ff, d_model)
        sd[f + "DenseReluDense.wo.weight"] = w(d_model, d_ff)
    sd["encoder.final_layer_norm.weight"] = (1 + 0.1 * g.standard_normal(d_model)).astype(np.float32)
    return sd


def t5_ids(seed, B, L, vocab):
    """Captions as FLUX feeds them: words, then </s> (1), then <pad> (0) to the full length."""
    g = np.random.default_rng(seed)
    ids = np.zeros((B, L), np.int32)
    for b in range(B):
        n = int(g.integers(3, L - 1))
        ids[b, :n] = g.integers(2, vocab, n)
        ids[b, n] = 1
    return ids


def cpp_encode(w, kind, ckpt, ids, tag):
    ip, op = w.path(tag + "_ids.safetensors"), w.path(tag + "_out.safetensors")
    st_write(ip, {"ids": np.asarray(ids, np.int32)})
    run_trainer("text-encode", kind, ckpt, ip, op)
    out, _ = st_read(op)
    return out


def compare(label, got, ref64, ref32):
    a, r, s = rel_err(got, ref64)
    _, floor, _ = rel_err(ref32, ref64)
    msg = f"{label} {list(np.shape(got))} max|ref| {s:.3g}: rel {r:.3g} (torch f32 vs f64 {floor:.3g}; tol {TOL:.0e})"
    if not r < TOL:
        raise CheckFailed(msg)
    return msg


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def t5_buckets_both_directions(tmp):
    """The buckets the reference computes are the ones T5 defines: exact for |d| < 8, keys after the
    query in the upper half, log-spaced beyond, clamped at max_distance. The C++ side is compared
    through t5_forward on long sequences below."""
    rel = torch.arange(-200, 201)
    b = t5_bucket(rel, 32, 128)
    expect = {0: 0, -1: 1, 1: 17, -7: 7, 7: 23, -8: 8, 8: 24, -127: 15, 127: 31, -200: 15, 200: 31}
    bad = {d: int(b[d + 200]) for d, want in expect.items() if int(b[d + 200]) != want}
    if bad:
        raise CheckFailed(f"buckets {bad}, expected {expect}")
    return f"{len(expect)} offsets in the expected buckets; {len(set(b.tolist()))} distinct buckets over [-200, 200]"


@check
def t5_forward_matches(tmp):
    """A T5 with 3 heads (of 8), 2 blocks; 2 captions of 150 padded tokens: offsets past 128 reach
    the clamped buckets in both directions."""
    w = Work(tmp, "t5")
    sd = make_t5(1)
    ck = w.path("t5.safetensors")
    st_write(ck, sd)
    ids = t5_ids(2, 2, 150, 90)
    got = cpp_encode(w, "t5", ck, ids, "a")["hidden"]
    return compare("hidden", got, t5_forward(sd, ids, 3), t5_forward(sd, ids, 3, dtype=torch.float32))


@check
def t5_config_buckets_and_tied_embedding(tmp):
    """A folder with config.json (16 buckets, max distance 20) whose embedding is stored as
    encoder.embed_tokens.weight under a prefix: the config's buckets are used."""
    w = Work(tmp, "t5cfg")
    d = w.path("text_encoder_2")
    os.makedirs(d)
    sd = make_t5(3, heads=4, d_kv=6, buckets=16, embed="encoder.embed_tokens.weight")
    st_write(os.path.join(d, "model.safetensors"), {"text_encoders.t5xxl.transformer." + k: v for k, v in sd.items()})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "t5", "num_heads": 4, "relative_attention_num_buckets": 16,
                   "relative_attention_max_distance": 20, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6}, f)
    ids = t5_ids(4, 1, 60, 90)
    got = cpp_encode(w, "t5", d, ids, "a")["hidden"]
    ref = t5_forward(sd, ids, 4, buckets=16, max_distance=20)
    return compare("hidden", got, ref, t5_forward(sd, ids, 4, 16, 20, torch.float32))


@check
def t5_random_folder_from_trainer(tmp):
    """`make-random t5 --shards 2` writes transformers' names, shards, index and config.json; this
    reference loads them (every tensor used) and the trainer's encoding matches it."""
    w = Work(tmp, "t5r")
    d = w.path("t5")
    run_trainer("make-random", "t5", d, "--shards", "2", "--vocab", "120", "--seed", "9")
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        index = json.load(f)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(st_read(os.path.join(d, shard))[0])
    if set(sd) != set(index["weight_map"]):
        raise CheckFailed("the index does not list exactly the shards' tensors")
    ids = t5_ids(10, 2, 24, 120)
    ref = t5_forward(sd, ids, cfg["num_heads"])
    got = cpp_encode(w, "t5", d, ids, "a")["hidden"]
    return f"{len(sd)} tensors, {cfg['num_heads']} heads: " + compare("hidden", got, ref, t5_forward(sd, ids, cfg["num_heads"], dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# CLIP text model


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def clip_forward(sd, ids, heads, eos_id=None, dtype=torch.float64):
    """(last hidden state, pooled): pooled at the first end-of-text id, or at the largest id when eos_id
    is None (transformers' rule for CLIP-L's legacy eos_token_id 2)."""
    p = {k: torch.tensor(v, dtype=dtype) for k, v in sd.items()}
    ids = torch.tensor(ids, dtype=torch.long)
    B, L = ids.shape
    W = p["text_model.embeddings.token_embedding.weight"].shape[1]
    x = p["text_model.embeddings.token_embedding.weight"][ids] + p["text_model.embeddings.position_embedding.weight"][:L]
    mask = torch.full((L, L), float("-inf"), dtype=dtype).triu(1)
    n_layers = 0
    while f"text_model.encoder.layers.{n_layers}.self_attn.q_proj.weight" in p:
        n_layers += 1
    for i in range(n_layers):
        n = f"text_model.encoder.layers.{i}."

        def lin(name, t):
            return t @ p[n + name + ".weight"].T + p[n + name + ".bias"]

        def heads_of(t):
            return t.view(B, L, heads, -1).transpose(1, 2)
        h = F.layer_norm(x, (W,), p[n + "layer_norm1.weight"], p[n + "layer_norm1.bias"], 1e-5)
        q = heads_of(lin("self_attn.q_proj", h)) * (W // heads) ** -0.5
        k, v = heads_of(lin("self_attn.k_proj", h)), heads_of(lin("self_attn.v_proj", h))
        att = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
        x = x + lin("self_attn.out_proj", (att @ v).transpose(1, 2).reshape(B, L, W))
        h = F.layer_norm(x, (W,), p[n + "layer_norm2.weight"], p[n + "layer_norm2.bias"], 1e-5)
        x = x + lin("mlp.fc2", quick_gelu(lin("mlp.fc1", h)))
    x = F.layer_norm(x, (W,), p["text_model.final_layer_norm.weight"], p["text_model.final_layer_norm.bias"], 1e-5)
    at = ids.argmax(-1) if eos_id is None else (ids == eos_id).int().argmax(-1)
    return x, x[torch.arange(B), at]


def make_clip(seed, vocab=100, width=48, layers=2, mlp=96, positions=77):
    g = np.random.default_rng(seed)

    def w(*shape):
        return (g.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)

    def small(n):
        return (0.1 * g.standard_normal(n)).astype(np.float32)
    sd = {"text_model.embeddings.token_embedding.weight": g.standard_normal((vocab, width)).astype(np.float32),
          "text_model.embeddings.position_embedding.weight": g.standard_normal((positions, width)).astype(np.float32)}
    for i in range(layers):
        n = f"text_model.encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            sd[n + ln + ".weight"] = (1 + small(width)).astype(np.float32)
            sd[n + ln + ".bias"] = small(width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[n + "self_attn." + proj + ".weight"] = w(width, width)
            sd[n + "self_attn." + proj + ".bias"] = small(width)
        sd[n + "mlp.fc1.weight"], sd[n + "mlp.fc1.bias"] = w(mlp, width), small(mlp)
        sd[n + "mlp.fc2.weight"], sd[n + "mlp.fc2.bias"] = w(width, mlp), small(width)
    sd["text_model.final_layer_norm.weight"] = (1 + small(width)).astype(np.float32)
    sd["text_model.final_layer_norm.bias"] = small(width)
    return sd


def clip_ids(seed, B, L, vocab, eos_pad=True):
    """As the FLUX pipeline tokenizes for CLIP: <|startoftext|> (vocab-2), words, <|endoftext|> (vocab-1),
    padded with <|endoftext|> to 77; each caption its own length, so the pooled positions differ."""
    g = np.random.default_rng(seed)
    bos, eos = vocab - 2, vocab - 1
    ids = np.full((B, L), eos if eos_pad else 0, np.int32)
    for b in range(B):
        n = int(g.integers(2, L - 2))
        ids[b, 0] = bos
        ids[b, 1:1 + n] = g.integers(0, vocab - 2, n)
        ids[b, 1 + n] = eos
    return ids


@check
def clip_forward_and_pooled_match(tmp):
    """Width 48 in 4 heads (config.json, as the real folder has it), 2 layers, 77 positions; three
    captions of different lengths padded with <|endoftext|>: the causal mask keeps every token's
    state independent of the padding after it, and the pooled output is the first <|endoftext|>."""
    w = Work(tmp, "clip")
    d = w.path("text_encoder")
    os.makedirs(d)
    sd = make_clip(5)
    st_write(os.path.join(d, "model.safetensors"), sd)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "clip_text_model", "num_attention_heads": 4, "hidden_act": "quick_gelu",
                   "layer_norm_eps": 1e-5, "eos_token_id": 2}, f)
    ids = clip_ids(6, 3, 77, 100)
    out = cpp_encode(w, "clip", d, ids, "a")
    h64, p64 = clip_forward(sd, ids, 4)
    h32, p32 = clip_forward(sd, ids, 4, dtype=torch.float32)
    return compare("hidden", out["hidden"], h64, h32) + "; " + compare("pooled", out["pooled"], p64, p32)


@check
def clip_first_eos_rule(tmp):
    """A config with a real eos_token_id (newer transformers configs): pooled at the first token with that
    id, which is not the largest id here (padding with 0 after it)."""
    w = Work(tmp, "clipeos")
    d = w.path("te")
    os.makedirs(d)
    sd = make_clip(7, vocab=100)
    st_write(os.path.join(d, "model.safetensors"), sd)
    eos = 40
    ids = clip_ids(8, 2, 20, 100, eos_pad=False)
    ids[ids == 99] = eos
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"num_attention_heads": 2, "hidden_act": "quick_gelu", "eos_token_id": eos}, f)
    out = cpp_encode(w, "clip", d, ids, "a")
    h64, p64 = clip_forward(sd, ids, 2, eos_id=eos)
    _, p32 = clip_forward(sd, ids, 2, eos_id=eos, dtype=torch.float32)
    _, p_argmax = clip_forward(sd, ids, 2)
    if rel_err(p_argmax, p64)[1] < 1e-3:
        raise CheckFailed("the test's ids do not tell the two pooling rules apart")
    return compare("pooled", out["pooled"], p64, p32)


@check
def clip_random_file_from_trainer_bf16_with_prefix(tmp):
    """`make-random clip --prefix ... --dtype bf16` (a combined file's naming): the reference on the
    bf16 values as float32 matches the trainer, which reads bf16 weights as they are stored."""
    w = Work(tmp, "clipr")
    ck = w.path("clip.safetensors")
    prefix = "text_encoders.clip_l.transformer."
    run_trainer("make-random", "clip", ck, "--prefix", prefix, "--vocab", "150", "--dtype", "bf16", "--seed", "3")
    raw, _ = st_read(ck)
    if not all(k.startswith(prefix) for k in raw):
        raise CheckFailed(f"names without the prefix: {[k for k in raw if not k.startswith(prefix)][:3]}")
    sd = {k[len(prefix):]: v for k, v in raw.items()}
    ids = clip_ids(4, 2, 77, 150)
    out = cpp_encode(w, "clip", ck, ids, "a")
    width = sd["text_model.final_layer_norm.weight"].shape[0]
    heads = max(1, width // 64)  # no config.json: CLIP-L's head size
    h64, p64 = clip_forward(sd, ids, heads)
    h32, p32 = clip_forward(sd, ids, heads, dtype=torch.float32)
    return compare("hidden", out["hidden"], h64, h32) + "; " + compare("pooled", out["pooled"], p64, p32)


def main():
    return run_checks(CHECKS, f"torch-reference (text encoders): torch {torch.__version__}", "graft-torchref-te-")


if __name__ == "__main__":
    sys.exit(main())
