#!/usr/bin/env python3
"""Independent check of the C++ Z-Image transformer and its Qwen3 text encoder: PyTorch
re-implementations, written from the published definitions (diffusers'
ZImageTransformer2DModel, transformer_z_image.py; transformers' Qwen3Model, modeling_qwen3.py),
which the trainer's forward outputs, LoRA gradients and text-encoder hidden states must match.

Run: /usr/bin/python3 trainer-cuda/tests/test_zimage_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_TRAINER = trainer binary (default <repo>/trainer-cuda/build/graft-trainer).
Prints ok/FAIL per check with the errors measured, then `torch-reference: N passed, N failed`;
exits non-zero on any failure. A missing binary or command is a FAIL, never a skip.

Trainer contract exercised:
  graft-trainer forward <transformer-folder> <inputs> <outputs> [--lora <lora>]      -> out
  graft-trainer lora-grad <transformer-folder> <inputs> <lora> <outputs>             -> out, loss, grad.<key>
  graft-trainer text-encode qwen3 <folder> <ids> <outputs> [--hidden-index K]        -> hidden

  <transformer-folder>: diffusers layout, config.json (all_patch_size [2], all_f_patch_size [1],
    in_channels, dim, n_layers, n_refiner_layers, n_heads, n_kv_heads = n_heads, norm_eps, qk_norm,
    cap_feat_dim, rope_theta, t_scale, axes_dims, axes_lens) and diffusion_pytorch_model.safetensors
    (F32, diffusers' tensor names).
  inputs (F32): x [B, C, H, W] latents (H, W even), t [B] the model's own timestep in [0, 1] (times
    t_scale inside), cap_feats [B, Lmax, cap_feat_dim], cap_lens [B] (integers 1..Lmax: item b's
    caption is cap_feats[b, :cap_lens[b]]; the rest is garbage here), lora-grad also target [B, C, H, W].
  out [B, C, H, W] = diffusers' forward output list (each [C, 1, H, W]) stacked, F squeezed; no sign flip.
  loss [1] = mean((out - target)^2); grad.<key> F32 for every matrix of the LoRA file.
  LoRA file: diffusion_model.<module>.lora_A.weight [rank, in], .lora_B.weight [out, rank], no alpha
    (scale 1), on every Linear of `layers`: attention.to_q/to_k/to_v/to_out.0, feed_forward.w1/w2/w3,
    adaLN_modulation.0; out += (x A^T) B^T.
  Qwen3 <folder>: config.json (transformers' Qwen3 keys) + model.safetensors (F32, model.* names).
    ids: `ids` I32 [B, L], optional `mask` I32 [B, L] (1 = token, 0 = right padding).
    hidden F32 [B, L, hidden_size] = transformers' output_hidden_states=True hidden_states[K]
    (default K = -2: the last layer's input, no final norm; K = -1: after model.norm). Only rows with
    mask = 1 are compared.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_flux_torch import finite_difference_error, grad_report, CheckFailed, Work, rel_err, run_checks, run_trainer, st_read, st_write  # noqa: E402

torch.set_num_threads(1)  # the test machine is shared; the models here are tiny

# Errors are max|cpp - ref| / max|ref| over a tensor (for the text encoder: over the rows with
# mask = 1), ref = torch float64 on the same float32 parameters and inputs. Each comparison's
# tolerance is FLOOR_FACTOR times the error torch's own float32 run makes on that same case
# ("floor"), never below the minimum below. Measured floors (torch 1.13, these models): Z-Image
# forward 2.6e-6 .. 1.7e-5, almost all of it from the float32 timestep-embedding arguments
# (t * 1000 up to 1000, as diffusers computes them: at t = 0 the floor is 3e-7 .. 6e-7); LoRA
# gradients 5e-6 .. 2.2e-5; Qwen3 hidden states 2e-7 .. 3.4e-7. Float32 RoPE angle tables (as
# diffusers builds them) change the Z-Image output by 3e-9. The deliberately wrong variants of
# zimage_tolerance_is_tight / qwen3_tolerance_is_tight differ by 0.08 .. 1.1 (each at least 40x,
# in fact over 600x, the tolerance it would have to pass); an eps of 1e-6 instead of 1e-5 in the
# q/k norms (5e-6) or 1e-5 instead of 1e-6 in the final LayerNorm (3e-6) is below the floor.
FLOOR_FACTOR = 10
FWD_TOL_MIN = 2e-5
GRAD_TOL_MIN = 2e-4
LOSS_TOL = 1e-4
TE_TOL_MIN = 2e-5

SEQ_MULTI_OF = 32      # diffusers pads the caption and the image tokens of each item to this
ADALN_EMBED_DIM = 256  # diffusers: the timestep embedding's width is min(dim, 256)
T_MID = 1024           # diffusers hard-codes the timestep MLP's middle width
T_FREQ = 256           # sinusoidal timestep features
QK_NORM_EPS = 1e-5     # diffusers' Attention(qk_norm="rms_norm", eps=1e-5): not norm_eps
FINAL_LN_EPS = 1e-6


def _pad_to(n):
    return n + (-n) % SEQ_MULTI_OF


def _t(a, dtype):
    return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype)


# ---------------------------------------------------------------------------------------------
# Z-Image (diffusers ZImageTransformer2DModel), as functions over a dict of torch tensors.

def zimage_config(**over):
    cfg = {"_class_name": "ZImageTransformer2DModel", "_diffusers_version": "0.36.0",
           "all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 4, "dim": 64,
           "n_layers": 2, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 2, "norm_eps": 1e-5,
           "qk_norm": True, "cap_feat_dim": 48, "rope_theta": 256.0, "t_scale": 1000.0,
           "axes_dims": [8, 12, 12], "axes_lens": [1024, 512, 512]}
    cfg.update(over)
    cfg["n_kv_heads"] = cfg["n_heads"]
    return cfg


def make_zimage(seed, cfg):
    """Random weights of O(1) effect everywhere: norm weights 1 +- 0.2, modulation rows that give
    scales 1 +- ~0.5 and gates tanh(+-0.5), random pad tokens."""
    rng = np.random.default_rng(seed)
    D, C, p, fp = cfg["dim"], cfg["in_channels"], cfg["all_patch_size"][0], cfg["all_f_patch_size"][0]
    hd, ffn, A = D // cfg["n_heads"], int(D / 3 * 8), min(D, ADALN_EMBED_DIM)
    key, sd = f"{p}-{fp}", {}

    def lin(name, n_out, n_in, gain=1.0, bias=True, b_std=0.1):
        sd[name + ".weight"] = (rng.standard_normal((n_out, n_in)) * gain / math.sqrt(n_in)).astype(np.float32)
        if bias:
            sd[name + ".bias"] = (rng.standard_normal(n_out) * b_std).astype(np.float32)

    def norm(name, n):
        sd[name] = (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    lin(f"all_x_embedder.{key}", D, fp * p * p * C)
    lin(f"all_final_layer.{key}.linear", fp * p * p * C, D)
    lin(f"all_final_layer.{key}.adaLN_modulation.1", D, A, gain=0.5, b_std=0.3)
    lin("t_embedder.mlp.0", T_MID, T_FREQ)
    lin("t_embedder.mlp.2", A, T_MID)
    norm("cap_embedder.0.weight", cfg["cap_feat_dim"])
    lin("cap_embedder.1", D, cfg["cap_feat_dim"])
    sd["x_pad_token"] = rng.standard_normal((1, D)).astype(np.float32)
    sd["cap_pad_token"] = rng.standard_normal((1, D)).astype(np.float32)
    for stack, n, modulated in (("noise_refiner", cfg["n_refiner_layers"], True),
                                ("context_refiner", cfg["n_refiner_layers"], False),
                                ("layers", cfg["n_layers"], True)):
        for i in range(n):
            P = f"{stack}.{i}."
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                lin(P + "attention." + proj, D, D, bias=False)
            norm(P + "attention.norm_q.weight", hd)
            norm(P + "attention.norm_k.weight", hd)
            for nm in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
                norm(P + nm + ".weight", D)
            lin(P + "feed_forward.w1", ffn, D, bias=False)
            lin(P + "feed_forward.w2", D, ffn, bias=False)
            lin(P + "feed_forward.w3", ffn, D, bias=False)
            if modulated:
                lin(P + "adaLN_modulation.0", 4 * D, A, gain=0.5, b_std=0.3)
    return sd


def timestep_features(t, dim=T_FREQ, max_period=10000.0):
    """[cos | sin] of t * max_period^(-k/half), k < half (diffusers' TimestepEmbedder order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=t.dtype) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_angles(pos, axes_dims, theta, dtype):
    """pos [..., 3] integer positions -> angles [..., head_dim/2]: each axis a its own frequency
    table theta^(-2j/d_a), j < d_a/2, the axes' tables concatenated."""
    parts = []
    for a, d in enumerate(axes_dims):
        inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        parts.append(pos[..., a:a + 1].to(torch.float64) * inv)
    return torch.cat(parts, dim=-1).to(dtype)


def rope_interleaved(x, ang):
    """x [B, L, H, D]; ang [B, L, D/2]: rotates the adjacent pairs (x[2j], x[2j+1]) by ang[j]."""
    c, s = torch.cos(ang)[:, :, None, :], torch.sin(ang)[:, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(x.shape)


def rope_halves(x, ang):
    """The wrong convention for Z-Image (Llama/Qwen's rotate_half): pairs (x[j], x[j + D/2])."""
    c, s = torch.cos(ang)[:, :, None, :], torch.sin(ang)[:, :, None, :]
    h = x.shape[-1] // 2
    x0, x1 = x[..., :h], x[..., h:]
    return torch.cat([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * w


def patchify(x, p, flux_order=False):
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], tokens row-major, features (ph pw c) as diffusers
    (flux_order: FLUX's (c ph pw), a deliberately wrong variant)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 1, 3, 5) if flux_order else x.permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tok, C, H, W, p, flux_order=False):
    B = tok.shape[0]
    if flux_order:
        x = tok.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)
    else:
        x = tok.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


def zimage_positions(n_cap, Ht, Wt):
    """Position ids (diffusers' patchify_and_embed) of one item: caption token i (of the caption
    padded to a multiple of 32) at (1 + i, 0, 0); image token (h, w) at (cap_padded + 1, h, w); the
    image's padding tokens at (0, 0, 0). Returns (image ids [n_img_padded, 3], caption ids)."""
    cp = _pad_to(n_cap)
    n_img = Ht * Wt
    img = torch.zeros(_pad_to(n_img), 3, dtype=torch.long)
    img[:n_img, 0] = cp + 1
    img[:n_img, 1] = torch.arange(Ht).repeat_interleave(Wt)
    img[:n_img, 2] = torch.arange(Wt).repeat(Ht)
    cap = torch.zeros(cp, 3, dtype=torch.long)
    cap[:, 0] = torch.arange(1, cp + 1)
    return img, cap


# Deliberately wrong variants (for zimage_tolerance_is_tight): what an implementation could get wrong.
ZIMAGE_VARIANTS = {
    "rope_halves": "RoPE on (x[j], x[j+D/2]) pairs instead of interleaved (x[2j], x[2j+1])",
    "flux_patch_order": "patch features (c ph pw) as FLUX instead of (ph pw c)",
    "pad_tokens_masked": "the inner pad tokens (image and caption) masked out of attention",
    "silu_block_modulation": "SiLU on the timestep embedding before the blocks' adaLN_modulation",
    "no_qk_norm": "no RMSNorm on q and k",
    "image_pos_unpadded_caption": "image tokens at (cap_len + 1, h, w) instead of (cap_padded_len + 1, h, w)",
    "cap_pad_positions_zero": "caption padding tokens at (0, 0, 0) instead of continuing (1 + i, 0, 0)",
    "final_no_silu": "no SiLU before the final layer's adaLN_modulation.1",
    "pipeline_timestep": "the pipeline's conversion (1 - t) applied to t",
}


class ZImage:
    """sd: {diffusers name: np.ndarray}; cfg: the config.json dict; dtype float32 or float64."""

    def __init__(self, sd, cfg, dtype, variant=None):
        self.cfg, self.dtype, self.variant = cfg, dtype, variant
        assert variant is None or variant in ZIMAGE_VARIANTS, variant
        self.W = {k: _t(v, dtype) for k, v in sd.items()}
        self.used = set()
        self.D = cfg["dim"]
        self.heads = cfg["n_heads"]
        self.hd = self.D // self.heads
        assert sum(cfg["axes_dims"]) == self.hd, (cfg["axes_dims"], self.hd)
        assert cfg["n_kv_heads"] == cfg["n_heads"]
        self.p, self.fp = cfg["all_patch_size"][0], cfg["all_f_patch_size"][0]
        assert self.fp == 1
        self.key = f"{self.p}-{self.fp}"

    def w(self, name):
        self.used.add(name)
        return self.W[name]

    def linear(self, name, x, lora):
        y = x @ self.w(name + ".weight").t()
        if name + ".bias" in self.W:
            y = y + self.w(name + ".bias")
        for delta in (lora or {}).get(name, ()):
            y = y + delta(x)
        return y

    def angles(self, pos):
        return rope_angles(pos, self.cfg["axes_dims"], float(self.cfg["rope_theta"]), self.dtype)

    def attention(self, P, h, ang, keymask, lora):
        B, L, _ = h.shape
        q = self.linear(P + "attention.to_q", h, lora).reshape(B, L, self.heads, self.hd)
        k = self.linear(P + "attention.to_k", h, lora).reshape(B, L, self.heads, self.hd)
        v = self.linear(P + "attention.to_v", h, lora).reshape(B, L, self.heads, self.hd)
        if self.cfg["qk_norm"] and self.variant != "no_qk_norm":
            q = rms_norm(q, self.w(P + "attention.norm_q.weight"), QK_NORM_EPS)
            k = rms_norm(k, self.w(P + "attention.norm_k.weight"), QK_NORM_EPS)
        rot = rope_halves if self.variant == "rope_halves" else rope_interleaved
        q, k = rot(q, ang), rot(k, ang)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))  # [B, H, L, hd]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        s = s.masked_fill(~keymask[:, None, None, :], float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        o = o.permute(0, 2, 1, 3).reshape(B, L, self.D)
        return self.linear(P + "attention.to_out.0", o, lora)

    def block(self, P, x, ang, keymask, adaln, lora):
        eps = self.cfg["norm_eps"]
        if adaln is not None:
            a_in = F.silu(adaln) if self.variant == "silu_block_modulation" else adaln
            m = self.linear(P + "adaLN_modulation.0", a_in, lora)[:, None, :]
            scale_attn, gate_attn, scale_ffn, gate_ffn = m.chunk(4, dim=-1)
            scale_attn, scale_ffn = 1 + scale_attn, 1 + scale_ffn
            gate_attn, gate_ffn = torch.tanh(gate_attn), torch.tanh(gate_ffn)
        else:
            scale_attn = gate_attn = scale_ffn = gate_ffn = 1.0
        h = rms_norm(x, self.w(P + "attention_norm1.weight"), eps) * scale_attn
        a = self.attention(P, h, ang, keymask, lora)
        x = x + gate_attn * rms_norm(a, self.w(P + "attention_norm2.weight"), eps)
        h = rms_norm(x, self.w(P + "ffn_norm1.weight"), eps) * scale_ffn
        f = self.linear(P + "feed_forward.w2", F.silu(self.linear(P + "feed_forward.w1", h, lora)) *
                        self.linear(P + "feed_forward.w3", h, lora), lora)
        return x + gate_ffn * rms_norm(f, self.w(P + "ffn_norm2.weight"), eps)

    def forward(self, inp, lora=None):
        cfg, dt, D, p = self.cfg, self.dtype, self.D, self.p
        x, t, cap = _t(inp["x"], dt), _t(inp["t"], dt), _t(inp["cap_feats"], dt)
        lens = [int(round(float(v))) for v in np.asarray(inp["cap_lens"]).reshape(-1)]
        B, C, H, W = x.shape
        assert C == cfg["in_channels"] and H % p == 0 and W % p == 0 and len(lens) == B
        assert all(1 <= n <= cap.shape[1] for n in lens), lens
        Ht, Wt = H // p, W // p
        n_img = Ht * Wt
        n_img_p = _pad_to(n_img)
        cap_p = [_pad_to(n) for n in lens]

        if self.variant == "pipeline_timestep":
            t = 1 - t
        tf = timestep_features(t * float(cfg["t_scale"]))
        adaln = self.linear("t_embedder.mlp.2", F.silu(self.linear("t_embedder.mlp.0", tf, lora)), lora)

        # positions (per item: the image's first axis follows the item's padded caption)
        img_pos, cap_pos = [], []
        for n in lens:
            ip, cp = zimage_positions(n, Ht, Wt)
            if self.variant == "image_pos_unpadded_caption":
                ip[:n_img, 0] = n + 1
            if self.variant == "cap_pad_positions_zero":
                cp[n:] = 0
            img_pos.append(ip)
            cap_pos.append(cp)

        # image tokens: embed, then the padding tokens (to a multiple of 32) are x_pad_token
        flux_order = self.variant == "flux_patch_order"
        xe = self.linear(f"all_x_embedder.{self.key}", patchify(x, p, flux_order), lora)
        xe = torch.cat([xe, self.w("x_pad_token").expand(B, n_img_p - n_img, D)], dim=1)
        img_ang = self.angles(torch.stack(img_pos))
        img_mask = torch.ones(B, n_img_p, dtype=torch.bool)
        if self.variant == "pad_tokens_masked":
            img_mask[:, n_img:] = False
        for i in range(cfg["n_refiner_layers"]):
            xe = self.block(f"noise_refiner.{i}.", xe, img_ang, img_mask, adaln, lora)

        # caption tokens: RMSNorm + Linear, padding tokens cap_pad_token, batch-padded and masked
        L_cap = max(cap_p)
        rows, cap_mask, cap_ang = [], torch.zeros(B, L_cap, dtype=torch.bool), []
        for b, n in enumerate(lens):
            e = self.linear("cap_embedder.1", rms_norm(cap[b, :n], self.w("cap_embedder.0.weight"), cfg["norm_eps"]), lora)
            e = torch.cat([e, self.w("cap_pad_token").expand(cap_p[b] - n, D), e.new_zeros(L_cap - cap_p[b], D)])
            rows.append(e)
            cap_mask[b, :n if self.variant == "pad_tokens_masked" else cap_p[b]] = True
            pos = torch.cat([cap_pos[b], torch.zeros(L_cap - cap_p[b], 3, dtype=torch.long)])
            cap_ang.append(self.angles(pos))
        ce, cap_ang = torch.stack(rows), torch.stack(cap_ang)
        for i in range(cfg["n_refiner_layers"]):
            ce = self.block(f"context_refiner.{i}.", ce, cap_ang, cap_mask, None, lora)

        # unified sequence per item: [image tokens (padded), caption tokens (padded)], batch-padded
        L_u = n_img_p + L_cap
        rows, u_ang, u_mask = [], [], torch.zeros(B, L_u, dtype=torch.bool)
        for b in range(B):
            n_u = n_img_p + cap_p[b]
            rows.append(torch.cat([xe[b], ce[b, :cap_p[b]], xe.new_zeros(L_u - n_u, D)]))
            u_ang.append(torch.cat([img_ang[b], cap_ang[b, :cap_p[b]], img_ang.new_zeros(L_u - n_u, img_ang.shape[-1])]))
            u_mask[b, :n_img_p] = img_mask[b]
            u_mask[b, n_img_p:n_u] = cap_mask[b, :cap_p[b]]
        u, u_ang = torch.stack(rows), torch.stack(u_ang)
        for i in range(cfg["n_layers"]):
            u = self.block(f"layers.{i}.", u, u_ang, u_mask, adaln, lora)

        a_fin = adaln if self.variant == "final_no_silu" else F.silu(adaln)
        scale = 1 + self.linear(f"all_final_layer.{self.key}.adaLN_modulation.1", a_fin, lora)
        u = F.layer_norm(u, (D,), eps=FINAL_LN_EPS) * scale[:, None, :]
        out = self.linear(f"all_final_layer.{self.key}.linear", u, lora)
        return unpatchify(out[:, :n_img], C, H, W, p, flux_order)


# LoRA in the reference toolkit's Z-Image names.
_ZLORA_RE = re.compile(r"^diffusion_model\.(.+)\.(lora_A|lora_B)\.weight$")
ZIMAGE_LORA_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                       "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "adaLN_modulation.0")


def make_zimage_lora(sd, cfg, seed, rank=4):
    """Every Linear of `layers` (the reference toolkit's default targets); lora_B nonzero."""
    rng, out = np.random.default_rng(seed), {}
    for i in range(cfg["n_layers"]):
        for tgt in ZIMAGE_LORA_TARGETS:
            mod = f"layers.{i}.{tgt}"
            n_out, n_in = sd[mod + ".weight"].shape
            out[f"diffusion_model.{mod}.lora_A.weight"] = (rng.standard_normal((rank, n_in)) / math.sqrt(n_in)).astype(np.float32)
            out[f"diffusion_model.{mod}.lora_B.weight"] = (rng.standard_normal((n_out, rank)) * 0.3 / math.sqrt(rank)).astype(np.float32)
    return out


def build_zimage_lora(tensors, sd, dtype, requires_grad=False):
    """({module: [delta]}, {file key: leaf}); delta(x) = (x A^T) B^T."""
    mods, leaves, lora = {}, {}, {}
    for k in tensors:
        m = _ZLORA_RE.match(k)
        if not m:
            raise ValueError(f"LoRA tensor {k}: not a diffusion_model.<module>.lora_A/lora_B.weight name")
        mods.setdefault(m.group(1), {})[m.group(2)] = k
    for mod, keys in mods.items():
        if mod + ".weight" not in sd:
            raise ValueError(f"LoRA module {mod}: no such Linear in the model")
        A = _t(tensors[keys["lora_A"]], dtype).requires_grad_(requires_grad)
        Bm = _t(tensors[keys["lora_B"]], dtype).requires_grad_(requires_grad)
        assert A.shape[1] == sd[mod + ".weight"].shape[1] and Bm.shape[0] == sd[mod + ".weight"].shape[0], mod
        leaves[keys["lora_A"]], leaves[keys["lora_B"]] = A, Bm
        lora.setdefault(mod, []).append(lambda x, A=A, Bm=Bm: (x @ A.t()) @ Bm.t())
    return lora, leaves


def zimage_forward(sd, cfg, inp, lora_t=None, dtype=torch.float64, variant=None):
    model = ZImage(sd, cfg, dtype, variant)
    lora = build_zimage_lora(lora_t, sd, dtype)[0] if lora_t else None
    with torch.no_grad():
        return model.forward(inp, lora).numpy()


def zimage_lora_grad(sd, cfg, inp, lora_t, dtype=torch.float64):
    model = ZImage(sd, cfg, dtype)
    lora, leaves = build_zimage_lora(lora_t, sd, dtype, requires_grad=True)
    out = model.forward(inp, lora)
    loss = torch.mean((out - _t(inp["target"], dtype)) ** 2)
    loss.backward()
    return out.detach().numpy(), float(loss), {k: v.grad.numpy() for k, v in leaves.items()}


def make_zimage_inputs(cfg, seed, B, H, W, cap_lens, L_max=None, target=False):
    """cap_feats beyond each item's cap_lens hold other random values: they must not matter."""
    rng = np.random.default_rng(seed)
    L_max = L_max or max(cap_lens)
    inp = {"x": rng.standard_normal((B, cfg["in_channels"], H, W)).astype(np.float32),
           "t": rng.uniform(0.05, 0.95, B).astype(np.float32),
           "cap_feats": (rng.standard_normal((B, L_max, cfg["cap_feat_dim"])) *
                         rng.uniform(0.5, 2.0, (B, L_max, 1))).astype(np.float32),
           "cap_lens": np.asarray(cap_lens, np.float32)}
    if target:
        inp["target"] = rng.standard_normal((B, cfg["in_channels"], H, W)).astype(np.float32)
    return inp


def write_zimage_folder(root, sd, cfg):
    d = os.path.join(root, "transformer")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_write(os.path.join(d, "diffusion_pytorch_model.safetensors"), sd)
    return d


# ---------------------------------------------------------------------------------------------
# Qwen3 (transformers' Qwen3Model), hidden states as output_hidden_states=True returns them.

def qwen3_config(**over):
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 48,
           "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "vocab_size": 100, "max_position_embeddings": 128, "attention_bias": False,
           "tie_word_embeddings": True, "hidden_act": "silu", "torch_dtype": "float32",
           # the rest as Qwen3-4B's config.json has them (nulls included): read or ignored, never fatal
           "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
           "max_window_layers": 3, "rope_scaling": None, "sliding_window": None, "use_cache": True,
           "use_sliding_window": False, "transformers_version": "4.51.0"}
    cfg.update(over)
    return cfg


def make_qwen3(seed, cfg):
    rng = np.random.default_rng(seed)
    Hd, I, nh, nkv, hd = (cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                           "num_key_value_heads", "head_dim"))

    def w(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / math.sqrt(n_in)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)
    sd = {"model.embed_tokens.weight": rng.standard_normal((cfg["vocab_size"], Hd)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        P = f"model.layers.{i}."
        sd[P + "input_layernorm.weight"] = norm(Hd)
        sd[P + "self_attn.q_proj.weight"] = w(nh * hd, Hd)
        sd[P + "self_attn.k_proj.weight"] = w(nkv * hd, Hd)
        sd[P + "self_attn.v_proj.weight"] = w(nkv * hd, Hd)
        sd[P + "self_attn.o_proj.weight"] = w(Hd, nh * hd)
        sd[P + "self_attn.q_norm.weight"] = norm(hd)
        sd[P + "self_attn.k_norm.weight"] = norm(hd)
        sd[P + "post_attention_layernorm.weight"] = norm(Hd)
        sd[P + "mlp.gate_proj.weight"] = w(I, Hd)
        sd[P + "mlp.up_proj.weight"] = w(I, Hd)
        sd[P + "mlp.down_proj.weight"] = w(Hd, I)
    sd["model.norm.weight"] = norm(Hd)
    return sd


QWEN3_VARIANTS = {
    "rope_interleaved": "RoPE on adjacent pairs (x[2j], x[2j+1]) instead of rotate_half's (x[j], x[j+D/2])",
    "no_qk_norm": "no q_norm / k_norm",
    "gqa_tiled": "query head h on kv head h % n_kv instead of h // (n_heads / n_kv)",
    "final_norm_everywhere": "model.norm applied to hidden_states[-2] too",
    "not_causal": "bidirectional attention over the valid tokens",
}


def qwen3_hidden_states(sd, cfg, ids, mask=None, dtype=torch.float64, variant=None, used=None):
    """All hidden_states as transformers returns them: [embeddings, layer 0 out, ..., layer N-2 out,
    model.norm(layer N-1 out)] (N+1 entries)."""
    assert variant is None or variant in QWEN3_VARIANTS, variant
    used = used if used is not None else set()

    def p(name):
        used.add(name)
        return _t(sd[name], dtype)
    ids = torch.as_tensor(np.asarray(ids, np.int64))
    B, L = ids.shape
    mask = torch.ones(B, L, dtype=torch.bool) if mask is None else torch.as_tensor(np.asarray(mask) != 0)
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    x = p("model.embed_tokens.weight")[ids]
    hs = [x]
    inv = 1.0 / (float(cfg["rope_theta"]) ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = (torch.arange(L, dtype=torch.float64)[:, None] * inv[None]).to(dtype)  # [L, hd/2]
    allowed = mask[:, None, :].expand(B, L, L)
    if variant != "not_causal":
        allowed = allowed & torch.ones(L, L, dtype=torch.bool).tril()[None]

    def rope(t):  # t [B, heads, L, hd]
        if variant == "rope_interleaved":
            c, s = torch.cos(ang), torch.sin(ang)
            t0, t1 = t[..., 0::2], t[..., 1::2]
            return torch.stack([t0 * c - t1 * s, t0 * s + t1 * c], dim=-1).reshape(t.shape)
        c, s = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)
        h = hd // 2
        rot = torch.cat([-t[..., h:], t[..., :h]], dim=-1)
        return t * c + rot * s

    for i in range(cfg["num_hidden_layers"]):
        P = f"model.layers.{i}."
        h = rms_norm(x, p(P + "input_layernorm.weight"), eps)
        q = (h @ p(P + "self_attn.q_proj.weight").t()).reshape(B, L, nh, hd)
        k = (h @ p(P + "self_attn.k_proj.weight").t()).reshape(B, L, nkv, hd)
        v = (h @ p(P + "self_attn.v_proj.weight").t()).reshape(B, L, nkv, hd)
        if variant != "no_qk_norm":
            q = rms_norm(q, p(P + "self_attn.q_norm.weight"), eps)
            k = rms_norm(k, p(P + "self_attn.k_norm.weight"), eps)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        q, k = rope(q), rope(k)
        if variant == "gqa_tiled":
            k, v = k.repeat(1, nh // nkv, 1, 1), v.repeat(1, nh // nkv, 1, 1)
        else:
            k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        o = (torch.softmax(s, dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, L, nh * hd)
        x = x + o @ p(P + "self_attn.o_proj.weight").t()
        h = rms_norm(x, p(P + "post_attention_layernorm.weight"), eps)
        g = F.silu(h @ p(P + "mlp.gate_proj.weight").t()) * (h @ p(P + "mlp.up_proj.weight").t())
        x = x + g @ p(P + "mlp.down_proj.weight").t()
        hs.append(x)
    hs[-1] = rms_norm(hs[-1], p("model.norm.weight"), eps)
    if variant == "final_norm_everywhere":
        hs[-2] = rms_norm(hs[-2], p("model.norm.weight"), eps)
    return [h.numpy() for h in hs]


def qwen3_hidden(sd, cfg, ids, mask=None, K=-2, dtype=torch.float64, variant=None):
    with torch.no_grad():
        return qwen3_hidden_states(sd, cfg, ids, mask, dtype, variant)[K]


def qwen3_ids(seed, lens, L, vocab):
    """Right-padded token ids (random ids at the padding too: they must not matter) and the mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (len(lens), L)).astype(np.int32)
    mask = np.zeros((len(lens), L), np.int32)
    for b, n in enumerate(lens):
        mask[b, :n] = 1
    return ids, mask


def write_qwen3_folder(root, sd, cfg):
    d = os.path.join(root, "text_encoder")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_write(os.path.join(d, "model.safetensors"), sd)
    return d


# ---------------------------------------------------------------------------------------------
# Comparing with the trainer.

def _tol(floor, minimum):
    return max(minimum, FLOOR_FACTOR * floor)


def compare(label, got, ref64, ref32, tol_min):
    a64, r64, s = rel_err(got, ref64)
    a32, r32, _ = rel_err(got, ref32)
    _, floor, _ = rel_err(ref32, ref64)
    tol = _tol(floor, tol_min)
    msg = (f"{label}{list(np.shape(got))} max|ref| {s:.3g}: vs torch f64 max abs {a64:.3g} rel {r64:.3g}; "
           f"vs torch f32 rel {r32:.3g} (torch f32 vs f64 rel {floor:.3g}; tol {tol:.3g})")
    if not (r64 < tol and r32 < tol):
        raise CheckFailed(msg)
    return msg


def cpp_zimage_forward(w, folder, inp, lora_path=None, tag="fwd"):
    ip, op = w.path(tag + "_in.safetensors"), w.path(tag + "_out.safetensors")
    st_write(ip, {k: v for k, v in inp.items() if k != "target"})
    run_trainer("forward", folder, ip, op, *(["--lora", lora_path] if lora_path else []))
    out, _ = st_read(op)
    if "out" not in out:
        raise CheckFailed(f"forward output file has no `out` tensor (has {sorted(out)})")
    return out["out"]


def _zimage_gated(sd, cfg, keep):
    """A copy of sd whose block parts not in `keep` are off: the post-norm (attention_norm2 /
    ffn_norm2) weight zeroed makes that residual branch add nothing, in every kind of block."""
    sd = {k: v.copy() for k, v in sd.items()}
    for stack, n in (("noise_refiner", cfg["n_refiner_layers"]), ("context_refiner", cfg["n_refiner_layers"]),
                     ("layers", cfg["n_layers"])):
        for i in range(n):
            for part, norm in (("attn", "attention_norm2"), ("ffn", "ffn_norm2")):
                if f"{stack}.{i}.{part}" not in keep:
                    sd[f"{stack}.{i}.{norm}.weight"][:] = 0
    return sd


def diagnose_zimage_forward(w, sd, cfg, inp):
    """Blocks enabled one part at a time (noise refiner, then the main layers, whose attention is
    where the caption first reaches the image, then the context refiner)."""
    stages = [("embedders + final layer (all blocks off)", None)]
    for stack, n in (("noise_refiner", cfg["n_refiner_layers"]), ("layers", cfg["n_layers"]),
                     ("context_refiner", cfg["n_refiner_layers"])):
        for i in range(n):
            stages += [(f"+ {stack}.{i} attention", f"{stack}.{i}.attn"), (f"+ {stack}.{i} ffn", f"{stack}.{i}.ffn")]
    lines, keep, marked = [], set(), False
    for name, part in stages:
        if part:
            keep.add(part)
        sdg = _zimage_gated(sd, cfg, keep)
        folder = write_zimage_folder(w.path("diag"), sdg, cfg)
        try:
            got = cpp_zimage_forward(w, folder, inp, tag="diag")
            ref = zimage_forward(sdg, cfg, inp)
            r = rel_err(got, ref)[1]
            flag = ""
            if r >= FWD_TOL_MIN and not marked:
                flag, marked = "  <-- first mismatch", True
            lines.append(f"{name}: rel err {r:.3g}{flag}")
        except CheckFailed as e:
            lines.append(f"{name}: {e}")
    return "diagnosis (block parts enabled one at a time):\n        " + "\n        ".join(lines)


def check_zimage_forward(w, folder, sd, cfg, inp, lora_path=None, lora_t=None, label="", diagnose=True):
    ref64 = zimage_forward(sd, cfg, inp, lora_t, torch.float64)
    ref32 = zimage_forward(sd, cfg, inp, lora_t, torch.float32)
    got = cpp_zimage_forward(w, folder, inp, lora_path)
    try:
        return compare(label + "out ", got, ref64, ref32, FWD_TOL_MIN)
    except CheckFailed as e:
        if not diagnose:
            raise
        if lora_t:
            try:
                r = rel_err(cpp_zimage_forward(w, folder, inp, tag="nolora"), zimage_forward(sd, cfg, inp))[1]
                extra = f"the same forward without the LoRA: rel err {r:.3g}"
            except CheckFailed as e2:
                extra = f"the same forward without the LoRA: {e2}"
        else:
            extra = diagnose_zimage_forward(w, sd, cfg, inp)
        raise CheckFailed(f"{e}\n      {extra}")


def check_zimage_lora_grad(w, folder, sd, cfg, inp, lora_path, lora_t, label=""):
    ip, op = w.path("grad_in.safetensors"), w.path("grad_out.safetensors")
    st_write(ip, inp)
    run_trainer("lora-grad", folder, ip, lora_path, op)
    got, _ = st_read(op)
    out64, loss64, g64 = zimage_lora_grad(sd, cfg, inp, lora_t, torch.float64)
    out32, loss32, g32 = zimage_lora_grad(sd, cfg, inp, lora_t, torch.float32)
    ftol = _tol(rel_err(out32, out64)[1], FWD_TOL_MIN)
    floor = max(rel_err(g32[k], g64[k])[1] for k in g64)
    gtol = _tol(floor, GRAD_TOL_MIN)
    problems = [f"missing `{k}`" for k in ("out", "loss") if k not in got]
    expected = {"grad." + k for k in g64}
    missing = sorted(expected - set(got))
    extra = sorted(k for k in got if k.startswith("grad.") and k not in expected)
    if missing:
        problems.append(f"{len(missing)} gradients missing (e.g. {missing[:3]})")
    if extra:
        problems.append(f"unexpected gradients {extra[:3]}")
    out_rel = loss_rel = float("nan")
    if "out" in got:
        out_rel = rel_err(got["out"], out64)[1]
        if not out_rel < ftol:
            problems.append(f"out rel err {out_rel:.3g} (tol {ftol:.3g})")
    if "loss" in got:
        lv = np.asarray(got["loss"]).reshape(-1)
        if lv.size != 1:
            problems.append(f"loss has shape {list(np.shape(got['loss']))}, expected [1]")
        loss_rel = abs(float(lv[0]) - loss64) / abs(loss64)
        if not loss_rel < LOSS_TOL:
            problems.append(f"loss {float(lv[0]):.8g} vs torch {loss64:.8g} (rel {loss_rel:.3g})")
    worst, gmin = grad_report(got, g64, gtol, problems)
    msg = (f"{label}loss rel err {loss_rel:.3g}, out rel err {out_rel:.3g}, {len(g64)} grads: worst rel err "
           f"{worst[1]:.3g} ({worst[0]}), smallest max|grad| {gmin:.3g} (torch f32 vs f64 grad rel {floor:.3g}; "
           f"tol {gtol:.3g})")
    if problems:
        raise CheckFailed(msg + "\n      " + "\n      ".join(problems))
    return msg


def cpp_text_encode(w, folder, ids, mask, K=None, tag="te"):
    ip, op = w.path(tag + "_ids.safetensors"), w.path(tag + "_out.safetensors")
    t = {"ids": np.asarray(ids, np.int32)}
    if mask is not None:
        t["mask"] = np.asarray(mask, np.int32)
    st_write(ip, t)
    run_trainer("text-encode", "qwen3", folder, ip, op, *(["--hidden-index", K] if K is not None else []))
    out, _ = st_read(op)
    if "hidden" not in out:
        raise CheckFailed(f"text-encode output file has no `hidden` tensor (has {sorted(out)})")
    return out["hidden"]


def check_qwen3(w, folder, sd, cfg, ids, mask, K=None, label=""):
    """K None: no --hidden-index flag (the default, -2)."""
    Kr = -2 if K is None else K
    got = cpp_text_encode(w, folder, ids, mask, K)
    B, L = np.shape(ids)
    want = (B, L, cfg["hidden_size"])
    if tuple(np.shape(got)) != want:
        raise CheckFailed(f"hidden has shape {list(np.shape(got))}, expected {list(want)}")
    rows = np.ones((B, L), bool) if mask is None else np.asarray(mask) != 0
    ref64 = qwen3_hidden(sd, cfg, ids, mask, Kr)
    ref32 = qwen3_hidden(sd, cfg, ids, mask, Kr, torch.float32)
    try:
        return compare(f"{label}hidden[{Kr}] valid rows {int(rows.sum())} of ", got[rows], ref64[rows], ref32[rows], TE_TOL_MIN)
    except CheckFailed as e:
        n = cfg["num_hidden_layers"]
        lines = []
        for k in range(-(n + 1), 0):
            try:
                g = cpp_text_encode(w, folder, ids, mask, k, tag="diag")
                r = rel_err(g[rows], qwen3_hidden(sd, cfg, ids, mask, k)[rows])[1]
                lines.append(f"hidden[{k}]: rel err {r:.3g}")
            except CheckFailed as e2:
                lines.append(f"hidden[{k}]: {e2}")
        raise CheckFailed(f"{e}\n      diagnosis (each hidden state, -{n + 1} = embeddings):\n        " + "\n        ".join(lines))


# ---------------------------------------------------------------------------------------------
# The checks.

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def _zcase(seed, B, H, W, cap_lens, L_max=None, **cfg_over):
    cfg = zimage_config(**cfg_over)
    sd = make_zimage(seed, cfg)
    inp = make_zimage_inputs(cfg, seed + 100, B, H, W, cap_lens, L_max, target=True)
    return sd, cfg, inp


@check
def zimage_self_consistency(tmp):
    """Torch-only: the tiny model's sizes and every tensor used; f32 vs f64; patch order (ph pw c)
    and its inverse; the position ids of diffusers' patchify_and_embed; interleaved RoPE = the
    complex product diffusers computes (view_as_complex on (..., D/2, 2) pairs); batch padding has
    no effect (each item alone gives the same); cap_feats beyond cap_lens have none; the inner pad
    tokens do (they are attended); LoRA = merged weights; autograd = finite differences."""
    sd, cfg, inp = _zcase(1, B=2, H=8, W=8, cap_lens=[5, 37], L_max=40)
    model = ZImage(sd, cfg, torch.float64)
    with torch.no_grad():
        out64 = model.forward(inp).numpy()
    assert out64.shape == (2, 4, 8, 8), out64.shape
    unused = sorted(set(sd) - model.used)
    assert not unused, f"unused tensors {unused}"
    assert sd["layers.0.feed_forward.w1.weight"].shape == (170, 64)
    assert sd["t_embedder.mlp.0.weight"].shape == (1024, 256) and sd["t_embedder.mlp.2.weight"].shape == (64, 1024)
    assert sd["all_x_embedder.2-1.weight"].shape == (64, 16) and sd["layers.1.adaLN_modulation.0.weight"].shape == (256, 64)
    floor = rel_err(zimage_forward(sd, cfg, inp, dtype=torch.float32), out64)[1]
    assert floor < 1e-4, f"torch f32 vs f64 differ by {floor}"
    assert 0.3 < float(np.std(out64)) < 10, f"output scale {np.std(out64)} not O(1)"

    # patchify: token (h, w) feature (ph*2 + pw)*C + c = x[c, 2h+ph, 2w+pw]; unpatchify inverts it
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    tok = patchify(x, 2)
    for (b, h, w_, ph, pw, c) in ((0, 0, 0, 0, 1, 2), (1, 1, 2, 1, 0, 1), (1, 0, 1, 1, 1, 0)):
        assert tok[b, h * 3 + w_, (ph * 2 + pw) * 3 + c] == x[b, c, 2 * h + ph, 2 * w_ + pw]
    assert torch.equal(unpatchify(tok, 3, 4, 6, 2), x)
    assert torch.equal(unpatchify(patchify(x, 2, True), 3, 4, 6, 2, True), x)

    # positions: caption of 5 -> 32 slots at (1..32, 0, 0); a 2x3 token image at (33, h, w), its
    # 26 padding tokens at (0, 0, 0)
    ip, cp = zimage_positions(5, 2, 3)
    assert cp.shape == (32, 3) and cp[:, 0].tolist() == list(range(1, 33)) and not cp[:, 1:].any()
    assert ip.shape == (32, 3) and ip[:6].tolist() == [[33, 0, 0], [33, 0, 1], [33, 0, 2], [33, 1, 0], [33, 1, 1], [33, 1, 2]]
    assert not ip[6:].any()
    assert zimage_positions(37, 1, 1)[0][0].tolist() == [65, 0, 0] and zimage_positions(32, 1, 1)[0][0].tolist() == [33, 0, 0]

    # RoPE: the complex product diffusers computes, with its per-axis tables (index = position)
    rng = np.random.default_rng(2)
    pos = torch.from_numpy(rng.integers(0, 70, (2, 7, 3)))
    q = torch.from_numpy(rng.standard_normal((2, 7, 2, 32)))
    ang = rope_angles(pos, [8, 12, 12], 256.0, torch.float64)
    tables = [torch.polar(torch.ones(100, d // 2, dtype=torch.float64),
                          torch.outer(torch.arange(100, dtype=torch.float64),
                                      1.0 / 256.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)))
              for d in (8, 12, 12)]
    fc = torch.cat([tables[a][pos[..., a]] for a in range(3)], dim=-1)  # [2, 7, 16] complex
    exp = torch.view_as_real(torch.view_as_complex(q.reshape(2, 7, 2, 16, 2).contiguous()) * fc[:, :, None]).reshape(q.shape)
    rope_err = float(torch.max(torch.abs(rope_interleaved(q, ang) - exp)))
    assert rope_err < 1e-12, rope_err

    # batch padding (caption 32 vs 64 slots, unified 64 vs 96) changes nothing: each item alone
    alone_err = 0.0
    for b in range(2):
        n = int(inp["cap_lens"][b])
        one = {"x": inp["x"][b:b + 1], "t": inp["t"][b:b + 1], "cap_feats": inp["cap_feats"][b:b + 1, :n],
               "cap_lens": inp["cap_lens"][b:b + 1]}
        alone_err = max(alone_err, rel_err(zimage_forward(sd, cfg, one), out64[b:b + 1])[1])
    assert alone_err < 1e-12, f"item alone vs in the batch: {alone_err}"

    # caption features past cap_lens have no effect; the pad tokens do (inner padding is attended)
    inp2 = dict(inp, cap_feats=inp["cap_feats"].copy())
    inp2["cap_feats"][0, 5:] = 7.0
    inp2["cap_feats"][1, 37:] = -3.0
    garbage = rel_err(zimage_forward(sd, cfg, inp2), out64)[1]
    assert garbage < 1e-12, garbage
    effects = {}
    for tok_name in ("x_pad_token", "cap_pad_token"):
        sd2 = dict(sd)
        sd2[tok_name] = sd[tok_name] + 1.0
        effects[tok_name] = rel_err(zimage_forward(sd2, cfg, inp), out64)[1]
        assert effects[tok_name] > 1e-3, (tok_name, effects[tok_name])
    sd2 = dict(sd, x_pad_token=sd["x_pad_token"] + 1.0)
    inp16 = make_zimage_inputs(cfg, 5, 1, 16, 16, [9])  # 64 image tokens: no image padding
    no_pad = rel_err(zimage_forward(sd2, cfg, inp16), zimage_forward(sd, cfg, inp16))[1]
    assert no_pad < 1e-12, no_pad

    # LoRA through the deltas == LoRA merged into the weights; it matters
    lt = make_zimage_lora(sd, cfg, 4)
    out_l = zimage_forward(sd, cfg, inp, lt)
    merged = {k: v.astype(np.float64) for k, v in sd.items()}
    for k in lt:
        if k.endswith(".lora_A.weight"):
            mod = k[len("diffusion_model."):-len(".lora_A.weight")]
            Bk = k.replace("lora_A", "lora_B")
            merged[mod + ".weight"] = merged[mod + ".weight"] + lt[Bk].astype(np.float64) @ lt[k].astype(np.float64)
    merge_err = rel_err(out_l, zimage_forward(merged, cfg, inp))[1]
    lora_effect = rel_err(out_l, out64)[1]
    assert merge_err < 1e-12, merge_err
    assert lora_effect > 0.05, f"LoRA changes the output by only {lora_effect}"

    # autograd vs central finite differences on a few LoRA entries
    _, loss, g = zimage_lora_grad(sd, cfg, inp, lt)
    fd_err = finite_difference_error(
        lambda lt2: np.mean((zimage_forward(sd, cfg, inp, lt2) - inp["target"]) ** 2), lt, g,
        (("diffusion_model.layers.0.attention.to_k.lora_A.weight", (1, 3)),
         ("diffusion_model.layers.1.adaLN_modulation.0.lora_B.weight", (200, 2)),
         ("diffusion_model.layers.1.feed_forward.w2.lora_A.weight", (0, 17)),
         ("diffusion_model.layers.0.attention.to_out.0.lora_B.weight", (5, 1))))
    assert fd_err < 1e-4, fd_err
    return (f"torch f32 vs f64 out rel {floor:.3g}; rope vs complex {rope_err:.2g}; item alone vs batch "
            f"{alone_err:.2g}; caption garbage {garbage:.2g}; x_pad_token effect {effects['x_pad_token']:.3g}, "
            f"cap_pad_token {effects['cap_pad_token']:.3g} (x_pad_token unpadded image {no_pad:.2g}); LoRA effect "
            f"{lora_effect:.3g}, vs merged {merge_err:.2g}; autograd vs finite diff {fd_err:.2g}")


@check
def zimage_tolerance_is_tight(tmp):
    """Torch-only: each deliberately wrong variant (ZIMAGE_VARIANTS) differs from the reference by far
    more than the tolerance a trainer output must meet, on the cases the trainer checks use."""
    cases = [_zcase(11, B=2, H=8, W=8, cap_lens=[5, 37], L_max=40), _zcase(13, B=2, H=8, W=12, cap_lens=[20, 33])]
    lines, worst = [], float("inf")
    tols = []
    refs = []
    for sd, cfg, inp in cases:
        r64 = zimage_forward(sd, cfg, inp)
        tols.append(_tol(rel_err(zimage_forward(sd, cfg, inp, dtype=torch.float32), r64)[1], FWD_TOL_MIN))
        refs.append(r64)
    tol = max(tols)
    for v, what in ZIMAGE_VARIANTS.items():
        d = min(rel_err(zimage_forward(sd, cfg, inp, variant=v), r)[1] for (sd, cfg, inp), r in zip(cases, refs))
        worst = min(worst, d / tol)
        lines.append(f"{v} {d:.3g}")
    if worst < 40:
        raise CheckFailed(f"a wrong variant is within 40x the tolerance {tol:.3g}: " + ", ".join(lines))
    return f"tol {tol:.3g}; wrong variants differ by rel: " + ", ".join(lines) + f" (>= {worst:.0f}x tol)"


@check
def qwen3_self_consistency(tmp):
    """Torch-only: N+1 hidden states, every tensor used, f32 vs f64; rotate_half RoPE = the complex
    rotation of (x[j], x[j+D/2]); causal (a later token changes no earlier row); right padding changes
    no valid row; GQA: query head h uses kv head h // (n_heads / n_kv)."""
    cfg = qwen3_config()
    sd = make_qwen3(3, cfg)
    ids, mask = qwen3_ids(4, [40, 23], 40, cfg["vocab_size"])
    used = set()
    with torch.no_grad():
        hs = qwen3_hidden_states(sd, cfg, ids, mask, used=used)
    assert len(hs) == cfg["num_hidden_layers"] + 1
    assert sorted(set(sd) - used) == [], sorted(set(sd) - used)
    assert cfg["num_attention_heads"] * cfg["head_dim"] != cfg["hidden_size"]
    floors = [rel_err(qwen3_hidden(sd, cfg, ids, mask, K, torch.float32)[mask != 0], hs[K][mask != 0])[1] for K in (-2, -1)]
    assert max(floors) < 1e-5, floors
    assert all(0.3 < float(np.std(h)) < 10 for h in hs), [float(np.std(h)) for h in hs]

    ids2 = ids.copy()
    ids2[0, 30:] = (ids2[0, 30:] + 1) % cfg["vocab_size"]
    ids2[1, 23:] = (ids2[1, 23:] + 7) % cfg["vocab_size"]
    h2 = qwen3_hidden(sd, cfg, ids2, mask)
    causal = float(np.max(np.abs(h2[0, :30] - hs[-2][0, :30])))
    later = float(np.max(np.abs(h2[0, 30:] - hs[-2][0, 30:])))
    pad = float(np.max(np.abs(h2[1, :23] - hs[-2][1, :23])))
    assert causal < 1e-12 and pad < 1e-12 and later > 1e-2, (causal, pad, later)
    alone = qwen3_hidden(sd, cfg, ids[1:, :23], None)
    alone_err = float(np.max(np.abs(alone[0] - hs[-2][1, :23])))
    assert alone_err < 1e-12, alone_err

    # rotate_half == complex rotation of (x[j], x[j + D/2]) by p * theta^(-2j/D)
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((1, 1, 6, 16)))
    inv = 1.0 / 1e6 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    ang = torch.arange(6, dtype=torch.float64)[:, None] * inv
    c, s = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)
    got = x * c + torch.cat([-x[..., 8:], x[..., :8]], -1) * s
    z = torch.complex(x[..., :8], x[..., 8:]) * torch.polar(torch.ones_like(ang), ang)
    rope_err = float(torch.max(torch.abs(got - torch.cat([z.real, z.imag], -1))))
    assert rope_err < 1e-12, rope_err
    assert torch.equal(torch.arange(4).reshape(1, 4, 1, 1).repeat_interleave(2, 1).flatten()[:4], torch.tensor([0, 0, 1, 1]))
    return (f"torch f32 vs f64 rel {max(floors):.3g}; causal {causal:.2g}, padding {pad:.2g}, alone vs batch "
            f"{alone_err:.2g} (a later token changes later rows by {later:.3g}); rotate_half vs complex {rope_err:.2g}")


@check
def qwen3_tolerance_is_tight(tmp):
    """Torch-only: each deliberately wrong variant (QWEN3_VARIANTS) differs by far more than the
    tolerance, at K = -2 and K = -1 (the worse of the two reported)."""
    cfg = qwen3_config()
    sd = make_qwen3(21, cfg)
    ids, mask = qwen3_ids(22, [40, 23], 40, cfg["vocab_size"])
    rows = mask != 0
    tol = 0.0
    for K in (-2, -1):
        tol = max(tol, _tol(rel_err(qwen3_hidden(sd, cfg, ids, mask, K, torch.float32)[rows],
                                    qwen3_hidden(sd, cfg, ids, mask, K)[rows])[1], TE_TOL_MIN))
    lines, worst = [], float("inf")
    for v in QWEN3_VARIANTS:
        ds = [rel_err(qwen3_hidden(sd, cfg, ids, mask, K, variant=v)[rows], qwen3_hidden(sd, cfg, ids, mask, K)[rows])[1]
              for K in (-2, -1)]
        d = ds[0] if v == "final_norm_everywhere" else min(ds)
        worst = min(worst, d / tol)
        lines.append(f"{v} {d:.3g}")
    if worst < 40:
        raise CheckFailed(f"a wrong variant is within 40x the tolerance {tol:.3g}: " + ", ".join(lines))
    return f"tol {tol:.3g}; wrong variants differ by rel: " + ", ".join(lines) + f" (>= {worst:.0f}x tol)"


def _ztrainer_case(tmp, tag, seed, **kw):
    w = Work(tmp, tag)
    sd, cfg, inp = _zcase(seed, **kw)
    folder = write_zimage_folder(w.dir, sd, cfg)
    sd = st_read(os.path.join(folder, "diffusion_pytorch_model.safetensors"))[0]  # what the file holds
    lt = make_zimage_lora(sd, cfg, seed + 200)
    lp = w.path("lora.safetensors")
    st_write(lp, lt)
    return w, folder, sd, cfg, inp, lt, lp


_B2 = dict(B=2, H=8, W=8, cap_lens=[5, 37], L_max=40)


@check
def zimage_forward_b2_captions_5_37_8x8(tmp):
    """B=2, 8x8 latents (16 image tokens padded to 32 with x_pad_token), captions of 5 and 37 (32 and
    64 slots: cap_pad_token, batch padding masked in the context refiner and the main layers)."""
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "b2", 11, **_B2)
    return check_zimage_forward(w, folder, sd, cfg, inp)


@check
def zimage_forward_lora_b2(tmp):
    """The same with a rank-4 LoRA on all 16 Linears of `layers` (adaLN_modulation.0 included)."""
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "b2", 11, **_B2)
    return check_zimage_forward(w, folder, sd, cfg, inp, lp, lt, label="LoRA: ")


@check
def zimage_lora_grad_b2(tmp):
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "b2", 11, **_B2)
    return check_zimage_lora_grad(w, folder, sd, cfg, inp, lp, lt)


@check
def zimage_forward_b1_16x16_caption_32(tmp):
    """B=1, 16x16 latents (64 image tokens: no image padding), a caption of exactly 32 (no caption
    padding)."""
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "b1", 23, B=1, H=16, W=16, cap_lens=[32])
    return check_zimage_forward(w, folder, sd, cfg, inp)


@check
def zimage_lora_grad_b1_16x16(tmp):
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "b1", 23, B=1, H=16, W=16, cap_lens=[32])
    return check_zimage_lora_grad(w, folder, sd, cfg, inp, lp, lt)


@check
def zimage_forward_b2_8x16_captions_1_33(tmp):
    """Non-square 8x16 latents (4x8 = 32 tokens, no padding), captions of 1 and 33 tokens."""
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "ns", 31, B=2, H=8, W=16, cap_lens=[1, 33], L_max=36)
    return check_zimage_forward(w, folder, sd, cfg, inp)


@check
def zimage_forward_b2_8x12_padded_lora(tmp):
    """Non-square 8x12 latents (4x6 = 24 tokens padded to 32), captions of 20 and 33, with the LoRA."""
    w, folder, sd, cfg, inp, lt, lp = _ztrainer_case(tmp, "np", 13, B=2, H=8, W=12, cap_lens=[20, 33])
    m1 = check_zimage_forward(w, folder, sd, cfg, inp)
    m2 = check_zimage_forward(w, folder, sd, cfg, inp, lp, lt, label="LoRA: ")
    return f"{m1}\n      {m2}"


def _qcase(tmp, tag, seed):
    w = Work(tmp, tag)
    cfg = qwen3_config()
    sd = make_qwen3(seed, cfg)
    folder = write_qwen3_folder(w.dir, sd, cfg)
    sd = st_read(os.path.join(folder, "model.safetensors"))[0]
    return w, folder, sd, cfg


@check
def qwen3_hidden_default_b2_padded(tmp):
    """hidden 48, 4 heads x 16 (64 != 48), 2 kv heads, 3 layers; B=2, L=40, valid lengths 40 and 23
    (right padding), no --hidden-index: hidden_states[-2], the last layer's input."""
    w, folder, sd, cfg = _qcase(tmp, "q", 41)
    ids, mask = qwen3_ids(42, [40, 23], 40, cfg["vocab_size"])
    return check_qwen3(w, folder, sd, cfg, ids, mask)


@check
def qwen3_hidden_last_b2_padded(tmp):
    """The same with --hidden-index -1: after model.norm."""
    w, folder, sd, cfg = _qcase(tmp, "q", 41)
    ids, mask = qwen3_ids(42, [40, 23], 40, cfg["vocab_size"])
    return check_qwen3(w, folder, sd, cfg, ids, mask, K=-1)


@check
def qwen3_hidden_b1_no_mask(tmp):
    """B=1, 17 tokens, no `mask` in the ids file (every token valid), --hidden-index -2 given."""
    w, folder, sd, cfg = _qcase(tmp, "q1", 43)
    ids, _ = qwen3_ids(44, [17], 17, cfg["vocab_size"])
    return check_qwen3(w, folder, sd, cfg, ids, None, K=-2)


def main():
    return run_checks(CHECKS, f"torch-reference (Z-Image, Qwen3): torch {torch.__version__}", "graft-torchref-zimage-")


if __name__ == "__main__":
    sys.exit(main())
