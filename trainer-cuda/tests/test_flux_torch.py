#!/usr/bin/env python3
"""Independent check of the C++ FLUX.1 model: a PyTorch re-implementation of BFL FLUX.1
(flux/model.py, modules/layers.py, math.py) which the trainer's forward outputs and LoRA
gradients must match.

Run: /usr/bin/python3 trainer-cuda/tests/test_flux_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_TRAINER = trainer binary (default <repo>/trainer-cuda/build/graft-trainer).
Prints ok/FAIL per check with the errors measured, then `torch-reference: N passed, N failed`;
exits non-zero on any failure. A missing binary or command is a FAIL, never a skip.

Trainer contract exercised:
  graft-trainer forward <ckpt> <inputs> <outputs> [--lora <lora>]      -> out
  graft-trainer lora-grad <ckpt> <inputs> <lora> <outputs>             -> out, loss, grad.<key>
  graft-trainer make-tiny <dir> --seed N                               -> <dir>/model/transformer.safetensors
"""
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)  # the test machine is shared; the models here are tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER = os.path.abspath(os.environ.get("GRAFT_TRAINER") or
                          os.path.join(ROOT, "trainer-cuda", "build", "graft-trainer"))

# Errors are max|cpp - ref| / max|ref| over a tensor, ref = torch float64 on the same float32
# parameters and inputs. The tolerance of each comparison is FLOOR_FACTOR times the error torch's
# own float32 run makes on that same case ("floor"), but never below the minimum below. Measured
# floors: forward ~3e-7 without guidance_in, ~1e-5 with it (guidance*1000 up to 4000 as a float32
# timestep-embedding argument: ulp 2.4e-4); LoRA gradients ~2e-6 / ~4e-5. Why this tight: GELU erf
# instead of tanh changes the forward by only ~1.1e-4 and the gradients by ~8e-4 on these models.
FLOOR_FACTOR = 10
FWD_TOL_MIN = 2e-5
GRAD_TOL_MIN = 2e-4
LOSS_TOL = 1e-4

# ---------------------------------------------------------------------------------------------
# safetensors: u64 LE header length, JSON header, data buffer (offsets relative to the buffer).

_NP_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?", "F8_E4M3": "u1"}  # fp8: the raw codes


def st_read(path):
    """Returns ({name: np.ndarray (float dtypes as float32/float64)}, metadata dict)."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(buf)} bytes)")
    (n,) = struct.unpack("<Q", buf[:8])
    if 8 + n > len(buf):
        raise ValueError(f"{path}: header length {n} exceeds the file size {len(buf)}")
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    data = memoryview(buf)[8 + n:]
    out = {}
    for name, info in header.items():
        dt, shape, (b, e) = info["dtype"], list(info["shape"]), info["data_offsets"]
        if not 0 <= b <= e <= len(data):
            raise ValueError(f"{path}: tensor {name}: offsets {b},{e} outside the data ({len(data)} bytes)")
        raw = bytes(data[b:e])
        if dt == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in _NP_DTYPES:
            arr = np.frombuffer(raw, _NP_DTYPES[dt])
            if dt == "F16":
                arr = arr.astype(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name}: dtype {dt} not supported by this test")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{path}: tensor {name}: {arr.size} elements for shape {shape}")
        out[name] = arr.reshape(shape).copy()
    return out, meta


def _to_bf16_bits(a):
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even (no NaNs here)
    return u.astype("<u2")


def st_write(path, tensors, metadata=None, float_dtype="F32"):
    header, chunks, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            dt = float_dtype
            raw = (_to_bf16_bits(arr) if dt == "BF16" else
                   np.ascontiguousarray(arr, dtype={"F32": "<f4", "F64": "<f8", "F16": "<f2"}[dt])).tobytes()
        else:
            dt = {np.dtype("int64"): "I64", np.dtype("int32"): "I32"}[arr.dtype]
            raw = np.ascontiguousarray(arr, dtype=_NP_DTYPES[dt]).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)


# ---------------------------------------------------------------------------------------------
# The FLUX.1 model (BFL definition), as functions over a dict of torch tensors.

def default_axes_dim(head_dim):
    """FLUX.1's [16, 56, 56] for head_dim 128; for other widths head_dim/8 (even), the rest split
    equally into two even parts, any remainder going to axis 0 (16 -> [4, 6, 6])."""
    a0 = head_dim // 8 // 2 * 2
    rest = (head_dim - a0) // 2 // 2 * 2
    return [head_dim - 2 * rest, rest, rest]


def timestep_embedding(t, dim, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=t.dtype) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope(pos, dim, theta):
    """pos [B, L] -> [B, L, dim/2, 2, 2] rotation matrices, computed in float64 (as BFL)."""
    assert dim % 2 == 0
    scale = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    omega = 1.0 / (theta ** scale)
    out = pos.to(torch.float64)[..., None] * omega
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2)


def embed_nd(ids, axes_dim, theta, dtype):
    emb = torch.cat([rope(ids[..., i], axes_dim[i], theta) for i in range(ids.shape[-1])], dim=-3)
    return emb.unsqueeze(1).to(dtype)  # [B, 1, L, D/2, 2, 2]


def apply_rope(x, pe):
    x_ = x.reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * x_[..., 0] + pe[..., 1] * x_[..., 1]
    return out.reshape(*x.shape)


def attention(q, k, v, pe):
    """q, k, v [B, H, L, D] -> [B, L, H*D]; rope on adjacent pairs, softmax(q k^T / sqrt(D)) v."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    w = torch.softmax((q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5), dim=-1)
    x = w @ v
    B, H, L, D = x.shape
    return x.permute(0, 2, 1, 3).reshape(B, L, H * D)


def rms_norm(x, scale):
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + 1e-6) * scale


def layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


def split_heads(qkv, heads):
    """'B L (K H D) -> K B H L D'."""
    B, L, C = qkv.shape
    D = C // (3 * heads)
    x = qkv.reshape(B, L, 3, heads, D).permute(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


class FluxConfig:
    def __init__(self, sd, meta):
        def count(prefix):
            idx = [int(m.group(1)) for k in sd for m in [re.match(re.escape(prefix) + r"\.(\d+)\.", k)] if m]
            return max(idx) + 1 if idx else 0
        self.hidden, self.in_ch = sd["img_in.weight"].shape
        self.out_ch = sd["final_layer.linear.weight"].shape[0]
        self.ctx = sd["txt_in.weight"].shape[1]
        self.vec_in = sd["vector_in.in_layer.weight"].shape[1]
        self.depth = count("double_blocks")
        self.depth_single = count("single_blocks")
        if self.depth:
            self.head_dim = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
            self.mlp_hidden = sd["double_blocks.0.img_mlp.0.weight"].shape[0]
        else:
            self.head_dim = sd["single_blocks.0.norm.query_norm.scale"].shape[0]
            self.mlp_hidden = sd["single_blocks.0.linear1.weight"].shape[0] - 3 * self.hidden
        self.heads = self.hidden // self.head_dim
        assert self.heads * self.head_dim == self.hidden
        self.guidance = "guidance_in.in_layer.weight" in sd
        self.axes_dim = json.loads(meta["graft.axes_dim"]) if "graft.axes_dim" in meta else default_axes_dim(self.head_dim)
        assert sum(self.axes_dim) == self.head_dim, (self.axes_dim, self.head_dim)
        self.theta = 10000

    def __repr__(self):
        return (f"hidden {self.hidden} heads {self.heads}x{self.head_dim} mlp {self.mlp_hidden} "
                f"depth {self.depth}+{self.depth_single} in {self.in_ch} out {self.out_ch} ctx {self.ctx} "
                f"vec {self.vec_in} guidance {self.guidance} axes {self.axes_dim}")


class Flux:
    """sd: {BFL name: np.ndarray}; dtype: torch.float32 or torch.float64."""

    def __init__(self, sd, meta, dtype):
        self.cfg = FluxConfig(sd, meta)
        self.dtype = dtype
        self.W = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)).to(dtype) for k, v in sd.items()}
        self.used = set()

    def p(self, name):
        self.used.add(name)
        return self.W[name]

    def linear(self, name, x, lora):
        y = x @ self.p(name + ".weight").t()
        if name + ".bias" in self.W:
            y = y + self.p(name + ".bias")
        for r0, delta in (lora or {}).get(name, []):
            d = delta(x)
            r1 = r0 + d.shape[-1]
            y = torch.cat([y[..., :r0], y[..., r0:r1] + d, y[..., r1:]], dim=-1)
        return y

    def mlp_embedder(self, name, x, lora):
        return self.linear(name + ".out_layer", F.silu(self.linear(name + ".in_layer", x, lora)), lora)

    def modulation(self, name, vec, n, lora):
        return self.linear(name, F.silu(vec), lora)[:, None, :].chunk(n, dim=-1)

    def double_block(self, i, img, txt, vec, pe, lora):
        P, H = f"double_blocks.{i}.", self.cfg.heads
        im = self.modulation(P + "img_mod.lin", vec, 6, lora)  # shift, scale, gate, shift, scale, gate
        tm = self.modulation(P + "txt_mod.lin", vec, 6, lora)
        qkv = {}
        for s, x, m in (("img", img, im), ("txt", txt, tm)):
            xm = (1 + m[1]) * layer_norm(x) + m[0]
            q, k, v = split_heads(self.linear(P + s + "_attn.qkv", xm, lora), H)
            q = rms_norm(q, self.p(P + s + "_attn.norm.query_norm.scale"))
            k = rms_norm(k, self.p(P + s + "_attn.norm.key_norm.scale"))
            qkv[s] = (q, k, v)
        q, k, v = (torch.cat((qkv["txt"][j], qkv["img"][j]), dim=2) for j in range(3))
        attn = attention(q, k, v, pe)
        Lt = txt.shape[1]
        txt_attn, img_attn = attn[:, :Lt], attn[:, Lt:]
        img = img + im[2] * self.linear(P + "img_attn.proj", img_attn, lora)
        img = img + im[5] * self.linear(P + "img_mlp.2", gelu_tanh(
            self.linear(P + "img_mlp.0", (1 + im[4]) * layer_norm(img) + im[3], lora)), lora)
        txt = txt + tm[2] * self.linear(P + "txt_attn.proj", txt_attn, lora)
        txt = txt + tm[5] * self.linear(P + "txt_mlp.2", gelu_tanh(
            self.linear(P + "txt_mlp.0", (1 + tm[4]) * layer_norm(txt) + tm[3], lora)), lora)
        return img, txt

    def single_block(self, i, x, vec, pe, lora):
        P, c = f"single_blocks.{i}.", self.cfg
        shift, scale, gate = self.modulation(P + "modulation.lin", vec, 3, lora)
        xm = (1 + scale) * layer_norm(x) + shift
        qkv, mlp = torch.split(self.linear(P + "linear1", xm, lora), [3 * c.hidden, c.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, c.heads)
        q = rms_norm(q, self.p(P + "norm.query_norm.scale"))
        k = rms_norm(k, self.p(P + "norm.key_norm.scale"))
        attn = attention(q, k, v, pe)
        return x + gate * self.linear(P + "linear2", torch.cat((attn, gelu_tanh(mlp)), dim=2), lora)

    def forward(self, inp, lora=None):
        c, T = self.cfg, (lambda k: torch.from_numpy(np.asarray(inp[k], dtype=np.float64)).to(self.dtype))
        img = self.linear("img_in", T("img"), lora)
        vec = self.mlp_embedder("time_in", timestep_embedding(T("timesteps"), 256), lora)
        if c.guidance:
            vec = vec + self.mlp_embedder("guidance_in", timestep_embedding(T("guidance"), 256), lora)
        vec = vec + self.mlp_embedder("vector_in", T("y"), lora)
        txt = self.linear("txt_in", T("txt"), lora)
        ids = torch.cat((T("txt_ids"), T("img_ids")), dim=1)
        pe = embed_nd(ids, c.axes_dim, c.theta, self.dtype)
        for i in range(c.depth):
            img, txt = self.double_block(i, img, txt, vec, pe, lora)
        x = torch.cat((txt, img), dim=1)
        for i in range(c.depth_single):
            x = self.single_block(i, x, vec, pe, lora)
        img = x[:, txt.shape[1]:, ...]
        shift, scale = self.linear("final_layer.adaLN_modulation.1", F.silu(vec), lora).chunk(2, dim=1)
        img = (1 + scale[:, None, :]) * layer_norm(img) + shift[:, None, :]
        return self.linear("final_layer.linear", img, lora)


# ---------------------------------------------------------------------------------------------
# LoRA in diffusers/PEFT names, mapped onto the BFL modules (module -> (BFL linear, first row)).

_LORA_RE = re.compile(r"^transformer\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)\."
                      r"(lora_A\.weight|lora_B\.weight|alpha|lokr_w1|lokr_w2|lokr_w2_a|lokr_w2_b)$")


def lora_module_map(cfg):
    H, M = cfg.hidden, cfg.mlp_hidden
    double = {"attn.to_q": ("img_attn.qkv", 0, H), "attn.to_k": ("img_attn.qkv", H, H),
              "attn.to_v": ("img_attn.qkv", 2 * H, H),
              "attn.add_q_proj": ("txt_attn.qkv", 0, H), "attn.add_k_proj": ("txt_attn.qkv", H, H),
              "attn.add_v_proj": ("txt_attn.qkv", 2 * H, H),
              "attn.to_out.0": ("img_attn.proj", 0, H), "attn.to_add_out": ("txt_attn.proj", 0, H),
              "ff.net.0.proj": ("img_mlp.0", 0, M), "ff.net.2": ("img_mlp.2", 0, H),
              "ff_context.net.0.proj": ("txt_mlp.0", 0, M), "ff_context.net.2": ("txt_mlp.2", 0, H),
              "norm1.linear": ("img_mod.lin", 0, 6 * H), "norm1_context.linear": ("txt_mod.lin", 0, 6 * H)}
    single = {"attn.to_q": ("linear1", 0, H), "attn.to_k": ("linear1", H, H), "attn.to_v": ("linear1", 2 * H, H),
              "proj_mlp": ("linear1", 3 * H, M), "proj_out": ("linear2", 0, H),
              "norm.linear": ("modulation.lin", 0, 3 * H)}
    out = {}
    for i in range(cfg.depth):
        for m, (t, r0, n) in double.items():
            out[f"transformer_blocks.{i}.{m}"] = (f"double_blocks.{i}.{t}", r0, n)
    for i in range(cfg.depth_single):
        for m, (t, r0, n) in single.items():
            out[f"single_transformer_blocks.{i}.{m}"] = (f"single_blocks.{i}.{t}", r0, n)
    return out


def lora_modules(tensors):
    mods = {}
    for k in tensors:
        m = _LORA_RE.match(k)
        if not m:
            raise ValueError(f"LoRA tensor {k}: not a transformer.<module>.lora_A/lora_B/alpha name")
        mods.setdefault(f"{m.group(1)}.{m.group(2)}.{m.group(3)}", {})[m.group(4)] = k
    return mods


def build_lora(tensors, cfg, dtype, requires_grad=False):
    """Returns ({BFL linear: [(row0, delta)]}, {adapter key: leaf tensor}); delta(x) is the adapter's
    addition to the slice. LoRA: scale (x A^T) B^T, scale alpha/rank or 1. LoKr (LyCORIS, as ComfyUI
    applies it): x kron(w1, w2)^T times alpha/rank when w2 = w2_a @ w2_b (rank = w2_b's rows), else 1."""
    mmap, lora, leaves = lora_module_map(cfg), {}, {}
    for mod, keys in lora_modules(tensors).items():
        if mod not in mmap:
            raise ValueError(f"LoRA module {mod}: not a FLUX.1 module of this model")
        target, r0, n = mmap[mod]

        def leaf(k):
            t = torch.from_numpy(np.asarray(tensors[keys[k]], np.float64)).to(dtype).requires_grad_(requires_grad)
            leaves[keys[k]] = t
            return t

        alpha = float(np.asarray(tensors[keys["alpha"]]).reshape(-1)[0]) if "alpha" in keys else None
        if "lokr_w1" in keys:
            w1 = leaf("lokr_w1")
            if "lokr_w2" in keys:
                w2, scale = leaf("lokr_w2"), 1.0
                make_w2 = lambda w2=w2: w2
            else:
                w2a, w2b = leaf("lokr_w2_a"), leaf("lokr_w2_b")
                scale = alpha / w2b.shape[0] if alpha is not None else 1.0
                make_w2 = lambda a=w2a, b=w2b: a @ b
            delta = lambda x, w1=w1, make_w2=make_w2, s=scale: s * (x @ torch.kron(w1, make_w2()).t())
        else:
            A, B = leaf("lora_A.weight"), leaf("lora_B.weight")
            rank = A.shape[0]
            assert B.shape == (n, rank), (mod, tuple(B.shape), n, rank)
            scale = alpha / rank if alpha is not None else 1.0
            delta = lambda x, A=A, B=B, s=scale: s * ((x @ A.t()) @ B.t())
        lora.setdefault(target, []).append((r0, delta))
    return lora, leaves


def make_lora(sd, meta, seed, rank=4, only=None):
    """A random LoRA over every module (or those whose name ends with `only`). Blocks with an even
    index carry an alpha (scale 2 or 0.5, alternating over module kinds), odd ones none (scale 1)."""
    cfg, rng, out = FluxConfig(sd, meta), np.random.default_rng(seed), {}
    for j, (mod, (target, r0, n)) in enumerate(lora_module_map(cfg).items()):
        if only and not mod.endswith("." + only):
            continue
        block = int(mod.split(".")[1])
        fan_in = sd[target + ".weight"].shape[1]
        out[f"transformer.{mod}.lora_A.weight"] = (rng.standard_normal((rank, fan_in)) / math.sqrt(fan_in)).astype(np.float32)
        out[f"transformer.{mod}.lora_B.weight"] = (rng.standard_normal((n, rank)) * 0.3 / math.sqrt(rank)).astype(np.float32)
        if block % 2 == 0:
            out[f"transformer.{mod}.alpha"] = np.array(2.0 * rank if j % 2 else rank / 2.0, np.float32)
    return out


def make_lokr(sd, meta, seed, rank=4, factor=-1):
    """A random LoKr over every module, in ComfyUI's names: w1 [a, c] and w2 [b, d] full, or
    w2_a [b, rank] @ w2_b [rank, d] where rank < max(b, d) / 2 (LyCORIS' rule), with (a, b) and (c, d)
    the splits of the output and input sizes; odd modules carry an alpha."""
    def split(dim):  # LyCORIS' factorization, written from its documented examples
        if factor > 0 and dim % factor == 0:
            return factor, dim // factor
        lim = dim if factor <= 0 else factor
        m, n = 1, dim
        for cand in range(2, dim + 1):
            if dim % cand or cand > lim or cand > dim // cand:
                continue
            if cand + dim // cand <= m + n:
                m, n = cand, dim // cand
        return m, n
    cfg, rng, out = FluxConfig(sd, meta), np.random.default_rng(seed), {}
    for j, (mod, (target, r0, n)) in enumerate(lora_module_map(cfg).items()):
        fan_in = sd[target + ".weight"].shape[1]
        (a, b), (c, d) = split(n), split(fan_in)
        key = f"transformer.{mod}"
        out[key + ".lokr_w1"] = rng.standard_normal((a, c)).astype(np.float32) * 0.5
        if rank < max(b, d) / 2:
            out[key + ".lokr_w2_a"] = (rng.standard_normal((b, rank)) / math.sqrt(rank)).astype(np.float32)
            out[key + ".lokr_w2_b"] = (rng.standard_normal((rank, d)) * 0.3 / math.sqrt(d)).astype(np.float32)
        else:
            out[key + ".lokr_w2"] = (rng.standard_normal((b, d)) * 0.3 / math.sqrt(d)).astype(np.float32)
        if j % 2:
            out[key + ".alpha"] = np.array(rank * 2.0, np.float32)
    return out


# ---------------------------------------------------------------------------------------------
# Tiny random checkpoints and inputs.

def make_checkpoint(seed, hidden=64, head_dim=32, depth=2, depth_single=2, mlp_ratio=4, in_ch=64,
                    ctx=32, vec_in=16, guidance=True, axes="[4, 14, 14]"):
    rng = np.random.default_rng(seed)
    H, M, sd = hidden, hidden * mlp_ratio, {}

    def lin(name, n_out, n_in, w_gain=1.0, b_std=0.1):
        sd[name + ".weight"] = (rng.standard_normal((n_out, n_in)) * w_gain / math.sqrt(n_in)).astype(np.float32)
        sd[name + ".bias"] = (rng.standard_normal(n_out) * b_std).astype(np.float32)

    def norm_scale(name, n):
        sd[name] = (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    lin("img_in", H, in_ch)
    lin("txt_in", H, ctx)
    for e, n_in in (("time_in", 256), ("vector_in", vec_in)) + ((("guidance_in", 256),) if guidance else ()):
        lin(e + ".in_layer", H, n_in)
        lin(e + ".out_layer", H, H)
    for i in range(depth):
        P = f"double_blocks.{i}."
        for s in ("img", "txt"):
            lin(P + s + "_mod.lin", 6 * H, H, w_gain=0.5, b_std=0.3)
            lin(P + s + "_attn.qkv", 3 * H, H)
            norm_scale(P + s + "_attn.norm.query_norm.scale", head_dim)
            norm_scale(P + s + "_attn.norm.key_norm.scale", head_dim)
            lin(P + s + "_attn.proj", H, H)
            lin(P + s + "_mlp.0", M, H)
            lin(P + s + "_mlp.2", H, M)
    for i in range(depth_single):
        P = f"single_blocks.{i}."
        lin(P + "linear1", 3 * H + M, H)
        lin(P + "linear2", H, H + M)
        norm_scale(P + "norm.query_norm.scale", head_dim)
        norm_scale(P + "norm.key_norm.scale", head_dim)
        lin(P + "modulation.lin", 3 * H, H, w_gain=0.5, b_std=0.3)
    lin("final_layer.adaLN_modulation.1", 2 * H, H, w_gain=0.5, b_std=0.3)
    lin("final_layer.linear", in_ch, H)
    meta = {"graft.axes_dim": axes} if axes else {}
    return sd, meta


def make_inputs(cfg, seed, B, grid_h, grid_w, L_txt, target=False, origin=(0, 0)):
    """Image ids (0, row, col) of a grid_h x grid_w token grid whose first token is at `origin`."""
    rng = np.random.default_rng(seed)
    L = grid_h * grid_w
    ids = np.zeros((B, L, 3), np.float32)
    ids[..., 1] = origin[0] + np.repeat(np.arange(grid_h), grid_w)[None]
    ids[..., 2] = origin[1] + np.tile(np.arange(grid_w), grid_h)[None]
    inp = {"img": rng.standard_normal((B, L, cfg.in_ch)).astype(np.float32),
           "img_ids": ids,
           "txt": rng.standard_normal((B, L_txt, cfg.ctx)).astype(np.float32),
           "txt_ids": np.zeros((B, L_txt, 3), np.float32),
           "timesteps": rng.uniform(0.0, 1.0, B).astype(np.float32),
           "y": rng.standard_normal((B, cfg.vec_in)).astype(np.float32)}
    if cfg.guidance:
        inp["guidance"] = rng.uniform(1.0, 4.0, B).astype(np.float32)
    if target:
        inp["target"] = rng.standard_normal((B, L, cfg.out_ch)).astype(np.float32)
    return inp


# ---------------------------------------------------------------------------------------------
# Running the trainer and comparing.

class CheckFailed(Exception):
    pass


def run_trainer(*args, timeout=300):
    if not os.path.isfile(TRAINER):
        raise CheckFailed(f"trainer binary not found: {TRAINER} (build it with `make -C trainer-cuda cpu`, "
                          f"or point GRAFT_TRAINER at it)")
    cmd = [TRAINER] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`{' '.join(cmd)}` did not finish within {timeout} s")
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip())[-1500:]
        raise CheckFailed(f"`{' '.join(cmd)}` exited {r.returncode}: {tail}")
    return r


def rel_err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise CheckFailed(f"shape {list(got.shape)}, expected {list(ref.shape)}")
    if not np.all(np.isfinite(got)):
        raise CheckFailed(f"{int(np.sum(~np.isfinite(got)))} non-finite values")
    a = float(np.max(np.abs(got - ref))) if got.size else 0.0
    s = float(np.max(np.abs(ref))) if ref.size else 0.0
    return a, a / max(s, 1e-30), s


def torch_forward(sd, meta, inp, lora_t=None, dtype=torch.float64):
    model = Flux(sd, meta, dtype)
    lora = build_lora(lora_t, model.cfg, dtype)[0] if lora_t else None
    with torch.no_grad():
        return model.forward(inp, lora).numpy()


def torch_lora_grad(sd, meta, inp, lora_t, dtype=torch.float64):
    model = Flux(sd, meta, dtype)
    lora, leaves = build_lora(lora_t, model.cfg, dtype, requires_grad=True)
    out = model.forward(inp, lora)
    loss = torch.mean((out - torch.from_numpy(np.asarray(inp["target"], np.float64)).to(dtype)) ** 2)
    loss.backward()
    return out.detach().numpy(), float(loss), {k: v.grad.numpy() for k, v in leaves.items()}


class Work:
    """A temp folder holding the files of one comparison."""

    def __init__(self, tmp, tag):
        self.dir = os.path.join(tmp, tag)
        os.makedirs(self.dir, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, name)


def cpp_forward(w, ckpt, inp, lora_path=None, tag="fwd"):
    ip, op = w.path(tag + "_in.safetensors"), w.path(tag + "_out.safetensors")
    st_write(ip, {k: v for k, v in inp.items() if k != "target"})
    run_trainer("forward", ckpt, ip, op, *(["--lora", lora_path] if lora_path else []))
    out, _ = st_read(op)
    if "out" not in out:
        raise CheckFailed(f"forward output file has no `out` tensor (has {sorted(out)})")
    return out["out"]


def check_forward(w, ckpt, sd, meta, inp, lora_path=None, lora_t=None, label=""):
    ref64 = torch_forward(sd, meta, inp, lora_t, torch.float64)
    ref32 = torch_forward(sd, meta, inp, lora_t, torch.float32)
    got = cpp_forward(w, ckpt, inp, lora_path)
    a64, r64, s = rel_err(got, ref64)
    a32, r32, _ = rel_err(got, ref32)
    _, floor, _ = rel_err(ref32, ref64)
    tol = fwd_tol(floor)
    msg = (f"{label}out {list(got.shape)} max|ref| {s:.3g}: vs torch f64 max abs {a64:.3g} rel {r64:.3g}; "
           f"vs torch f32 max abs {a32:.3g} rel {r32:.3g} (torch f32 vs f64 rel {floor:.3g}; tol {tol:.3g})")
    if not (r64 < tol and r32 < tol):
        raise CheckFailed(msg)
    return msg


def fwd_tol(floor):
    return max(FWD_TOL_MIN, FLOOR_FACTOR * floor)


def finite_difference_error(loss_of, lt, grads, probes, h=1e-6):
    """The worst relative difference between grads[key][idx] and the central difference of loss_of(adapter
    tensors) at each probe (key, idx)."""
    worst = 0.0
    for key, idx in probes:
        vals = []
        for sgn in (1, -1):
            lt2 = dict(lt)
            lt2[key] = lt[key].astype(np.float64).copy()
            lt2[key][idx] += sgn * h
            vals.append(loss_of(lt2))
        fd = (vals[0] - vals[1]) / (2 * h)
        worst = max(worst, abs(fd - grads[key][idx]) / max(abs(grads[key][idx]), 1e-8))
    return worst


def grad_report(got, g64, gtol, problems):
    """Each reference gradient g64[key] against the trainer's grad.<key>: appends what is off to `problems`;
    returns the worst (key, rel err) and the smallest max|grad| (a gradient that is all but zero says little)."""
    worst, bad, gmin = ("", 0.0), [], float("inf")
    for k in sorted(g64):
        gmin = min(gmin, float(np.max(np.abs(g64[k]))))
        if "grad." + k not in got:
            continue
        try:
            a, r, s = rel_err(got["grad." + k], g64[k])
        except CheckFailed as e:
            bad.append((float("inf"), f"{k}: {e}"))
            continue
        if r > worst[1]:
            worst = (k, r)
        if not r < gtol:
            bad.append((r, f"{k}: max abs {a:.3g} rel {r:.3g} (max|ref| {s:.3g})"))
    if bad:
        bad = [m for _, m in sorted(bad, reverse=True)]
        problems.append(f"{len(bad)}/{len(g64)} gradients off, worst first:\n        " +
                        "\n        ".join(bad[:12]) + ("\n        ..." if len(bad) > 12 else ""))
    return worst, gmin


def check_lora_grad(w, ckpt, sd, meta, inp, lora_path, lora_t, label=""):
    ip, op = w.path("grad_in.safetensors"), w.path("grad_out.safetensors")
    st_write(ip, inp)
    run_trainer("lora-grad", ckpt, ip, lora_path, op)
    got, _ = st_read(op)
    out64, loss64, g64 = torch_lora_grad(sd, meta, inp, lora_t, torch.float64)
    out32, loss32, g32 = torch_lora_grad(sd, meta, inp, lora_t, torch.float32)
    ftol = fwd_tol(rel_err(out32, out64)[1])
    floor = max(rel_err(g32[k], g64[k])[1] for k in g64)
    gtol = max(GRAD_TOL_MIN, FLOOR_FACTOR * floor)
    problems = []
    for k in ("out", "loss"):
        if k not in got:
            problems.append(f"missing `{k}`")
    expected = {"grad." + k for k in g64}
    missing, extra = sorted(expected - set(got)), sorted(k for k in got if k.startswith("grad.") and k not in expected)
    if missing:
        problems.append(f"{len(missing)} gradients missing (e.g. {missing[:3]})")
    if extra:
        problems.append(f"unexpected gradients {extra[:3]}")
    loss_rel = out_rel = float("nan")
    if "out" in got:
        out_rel = rel_err(got["out"], out64)[1]
        if not out_rel < ftol:
            problems.append(f"out rel err {out_rel:.3g}")
    if "loss" in got:
        if np.asarray(got["loss"]).size != 1:
            problems.append(f"loss has shape {list(np.shape(got['loss']))}, expected [1]")
        loss_rel = abs(float(np.asarray(got["loss"]).reshape(-1)[0]) - loss64) / abs(loss64)
        if not loss_rel < LOSS_TOL:
            problems.append(f"loss {float(np.asarray(got['loss']).reshape(-1)[0]):.8g} vs torch {loss64:.8g} (rel {loss_rel:.3g})")
    worst, gmin = grad_report(got, g64, gtol, problems)
    msg = (f"{label}loss rel err {loss_rel:.3g}, out rel err {out_rel:.3g}, {len(g64)} grads: worst rel err "
           f"{worst[1]:.3g} ({worst[0]}), smallest max|grad| {gmin:.3g} (torch f32 vs f64 grad rel {floor:.3g}; "
           f"tol {gtol:.3g})")
    if problems:
        raise CheckFailed(msg + "\n      " + "\n      ".join(problems))
    return msg


# ---------------------------------------------------------------------------------------------
# Diagnosis on a forward mismatch: turn blocks off through their gates (gate = 0 makes a block the
# identity without changing the checkpoint's layout) and enable them one part at a time.

def _gated(sd, keep):
    """A copy of sd with the gate rows of every block part not in `keep` zeroed."""
    sd = {k: v.copy() for k, v in sd.items()}
    cfg, H = FluxConfig(sd, {}), sd["img_in.weight"].shape[0]
    for i in range(cfg.depth):
        for s in ("img", "txt"):
            for part, g in (("attn", 2), ("mlp", 5)):
                if (f"double.{i}.{part}") not in keep:
                    for t in ("weight", "bias"):
                        sd[f"double_blocks.{i}.{s}_mod.lin.{t}"][g * H:(g + 1) * H] = 0
    for i in range(cfg.depth_single):
        if f"single.{i}" not in keep:
            for t in ("weight", "bias"):
                sd[f"single_blocks.{i}.modulation.lin.{t}"][2 * H:3 * H] = 0
    return sd


def diagnose_forward(w, sd, meta, inp):
    cfg, lines, keep = FluxConfig(sd, meta), [], []
    stages = [("embedders + final layer (all blocks gated off)", None)]
    for i in range(cfg.depth):
        stages += [(f"+ double block {i} attention", f"double.{i}.attn"), (f"+ double block {i} mlp", f"double.{i}.mlp")]
    stages += [(f"+ single block {i}", f"single.{i}") for i in range(cfg.depth_single)]
    for name, part in stages:
        if part:
            keep.append(part)
        sdg = _gated(sd, set(keep))
        ck = w.path("diag.safetensors")
        st_write(ck, sdg, meta)
        try:
            got = cpp_forward(w, ck, inp, tag="diag")
            a, r, _ = rel_err(got, torch_forward(sdg, meta, inp))
            lines.append(f"{name}: rel err {r:.3g}" + ("  <-- first mismatch" if r >= FWD_TOL_MIN and not any("<--" in l for l in lines) else ""))
        except CheckFailed as e:
            lines.append(f"{name}: {e}")
    return "diagnosis (blocks enabled one part at a time):\n        " + "\n        ".join(lines)


def diagnose_lora(w, ckpt, sd, meta, inp, seed):
    cfg, lines = FluxConfig(sd, meta), []
    try:
        r = rel_err(cpp_forward(w, ckpt, inp, tag="diag_base"), torch_forward(sd, meta, inp))[1]
    except CheckFailed as e:
        return f"forward without LoRA fails too: {e}"
    if r >= FWD_TOL_MIN:
        return f"forward without LoRA already differs (rel err {r:.3g}): see the forward check's diagnosis"
    kinds = sorted({m.split(".", 2)[2] + ("" if m.startswith("transformer_blocks") else " (single)")
                    for m in lora_module_map(cfg)})
    for kind in kinds:
        single = kind.endswith(" (single)")
        suffix = kind.replace(" (single)", "")
        lt = {k: v for k, v in make_lora(sd, meta, seed, only=suffix).items()
              if k.startswith("transformer.single_transformer_blocks.") == single}
        lp = w.path("diag_lora.safetensors")
        st_write(lp, lt)
        try:
            got = cpp_forward(w, ckpt, inp, lp, tag="diag_lora")
            r = rel_err(got, torch_forward(sd, meta, inp, lt))[1]
            if r >= FWD_TOL_MIN:
                lines.append(f"LoRA on {kind} only: rel err {r:.3g}")
        except CheckFailed as e:
            lines.append(f"LoRA on {kind} only: {e}")
    return "diagnosis (one LoRA module kind at a time): " + ("\n        " + "\n        ".join(lines) if lines else "each kind alone matches")


# ---------------------------------------------------------------------------------------------
# The checks.

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def self_consistency(tmp):
    """Torch-only: f32 vs f64, safetensors round trip, rope = complex rotation, LoRA = merged
    weights, autograd = finite differences. Runs without the trainer."""
    sd, meta = make_checkpoint(1)
    ck = os.path.join(tmp, "self.safetensors")
    st_write(ck, sd, meta)
    sd2, meta2 = st_read(ck)
    assert meta2 == meta and sorted(sd2) == sorted(sd) and all(np.array_equal(sd[k], sd2[k]) for k in sd), "st round trip"
    bf, _ = (st_write(ck, {"x": sd["img_in.weight"]}, float_dtype="BF16"), st_read(ck))[1]
    assert np.max(np.abs(bf["x"] - sd["img_in.weight"])) <= np.max(np.abs(sd["img_in.weight"])) * 2 ** -8, "bf16 round trip"

    model = Flux(sd, meta, torch.float64)
    cfg = model.cfg
    assert (cfg.hidden, cfg.heads, cfg.head_dim, cfg.mlp_hidden, cfg.depth, cfg.depth_single, cfg.axes_dim) == \
        (64, 2, 32, 256, 2, 2, [4, 14, 14]), repr(cfg)
    assert default_axes_dim(128) == [16, 56, 56] and default_axes_dim(32) == [4, 14, 14], default_axes_dim(128)
    assert default_axes_dim(16) == [4, 6, 6] and default_axes_dim(64) == [8, 28, 28], default_axes_dim(16)
    inp = make_inputs(cfg, 2, B=2, grid_h=4, grid_w=4, L_txt=8, target=True)
    with torch.no_grad():
        out64 = model.forward(inp).numpy()
    assert out64.shape == (2, 16, 64), out64.shape
    assert set(model.used) == set(sd), f"unused tensors {sorted(set(sd) - model.used)}"
    _, fwd_floor, scale = rel_err(torch_forward(sd, meta, inp, dtype=torch.float32), out64)
    assert fwd_floor < 1e-4, f"torch f32 vs f64 differ by {fwd_floor}"
    assert 0.3 < float(np.std(out64)) < 10, f"output scale {np.std(out64)} not O(1)"

    # rope: pair (x0, x1) at position p rotated by angle p*omega, as a complex product
    B, Hh, L, D = 2, 2, 5, 32
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(rng.integers(0, 9, (B, L, 3)).astype(np.float64))
    x = torch.from_numpy(rng.standard_normal((B, Hh, L, D)))
    pe = embed_nd(ids, [4, 14, 14], 10000, torch.float64)
    got = apply_rope(x, pe)
    ang = torch.cat([ids[..., a, None] * (1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
                     for a, d in enumerate([4, 14, 14])], dim=-1)[:, None]  # [B,1,L,D/2]
    xc = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.exp(torch.complex(torch.zeros_like(ang), ang))
    exp = torch.stack([xc.real, xc.imag], dim=-1).reshape(B, Hh, L, D)
    assert torch.max(torch.abs(got - exp)) < 1e-12, "rope"

    # LoRA through the row slices == LoRA merged into the BFL weights
    lt = make_lora(sd, meta, 4)
    with torch.no_grad():
        out_l = Flux(sd, meta, torch.float64).forward(inp, build_lora(lt, cfg, torch.float64)[0]).numpy()
    merged = {k: v.astype(np.float64) for k, v in sd.items()}
    for mod, (target, r0, n) in lora_module_map(cfg).items():
        A, Bm = lt[f"transformer.{mod}.lora_A.weight"], lt[f"transformer.{mod}.lora_B.weight"]
        al = lt.get(f"transformer.{mod}.alpha")
        s = float(al) / A.shape[0] if al is not None else 1.0
        merged[target + ".weight"][r0:r0 + n] += s * (Bm.astype(np.float64) @ A.astype(np.float64))
    with torch.no_grad():
        out_m = Flux(merged, meta, torch.float64).forward(inp).numpy()
    merge_err = rel_err(out_l, out_m)[1]
    lora_effect = rel_err(out_l, out64)[1]
    assert merge_err < 1e-12, merge_err
    assert lora_effect > 0.05, f"LoRA changes the output by only {lora_effect}"

    # autograd vs central finite differences on a few LoRA entries
    _, loss, g = torch_lora_grad(sd, meta, inp, lt)
    fd_err = finite_difference_error(
        lambda lt2: np.mean((torch_forward(sd, meta, inp, lt2) - inp["target"]) ** 2), lt, g,
        (("transformer.transformer_blocks.0.attn.to_k.lora_A.weight", (1, 3)),
         ("transformer.transformer_blocks.1.norm1_context.linear.lora_B.weight", (200, 2)),
         ("transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight", (17, 0)),
         ("transformer.single_transformer_blocks.0.norm.linear.lora_A.weight", (0, 5))))
    assert fd_err < 1e-4, fd_err
    return (f"torch f32 vs f64 out rel {fwd_floor:.3g} (max|out| {scale:.3g}); LoRA changes out by rel "
            f"{lora_effect:.3g}; LoRA vs merged rel {merge_err:.3g}; autograd vs finite diff rel {fd_err:.3g}")


def _tiny_case(tmp, tag, seed, B, gh, gw, L_txt, float_dtype="F32", origin=(0, 0), **ck_kw):
    w = Work(tmp, tag)
    sd, meta = make_checkpoint(seed, **ck_kw)
    ck = w.path("model.safetensors")
    st_write(ck, sd, meta, float_dtype=float_dtype)
    sd, meta = st_read(ck)  # the reference uses exactly what the file holds (bf16-rounded, say)
    cfg = FluxConfig(sd, meta)
    inp = make_inputs(cfg, seed + 100, B, gh, gw, L_txt, target=True, origin=origin)
    lt = make_lora(sd, meta, seed + 200)
    lp = w.path("lora.safetensors")
    st_write(lp, lt)
    return w, ck, sd, meta, inp, lt, lp


def _forward_with_diagnosis(w, ck, sd, meta, inp, label=""):
    try:
        return check_forward(w, ck, sd, meta, inp, label=label)
    except CheckFailed as e:
        if "not found" in str(e) or "exited" in str(e):
            raise
        raise CheckFailed(f"{e}\n      {diagnose_forward(w, sd, meta, inp)}")


def _lora_forward_with_diagnosis(w, ck, sd, meta, inp, lp, lt, seed, label=""):
    try:
        return check_forward(w, ck, sd, meta, inp, lp, lt, label=label)
    except CheckFailed as e:
        if "not found" in str(e) or "exited" in str(e):
            raise
        raise CheckFailed(f"{e}\n      {diagnose_lora(w, ck, sd, meta, inp, seed)}")


@check
def forward_guidance(tmp):
    """hidden 64, 2 heads of 32, 2+2 blocks, guidance_in, B=2, 4x4 image tokens, 8 text tokens."""
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "g", 11, B=2, gh=4, gw=4, L_txt=8)
    return _forward_with_diagnosis(w, ck, sd, meta, inp)


@check
def forward_lora_guidance(tmp):
    """The same with a LoRA on all 40 modules (incl. modulation), alpha on those of blocks 0."""
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "g", 11, B=2, gh=4, gw=4, L_txt=8)
    return _lora_forward_with_diagnosis(w, ck, sd, meta, inp, lp, lt, 11 + 200)


@check
def lora_grad_guidance(tmp):
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "g", 11, B=2, gh=4, gw=4, L_txt=8)
    return check_lora_grad(w, ck, sd, meta, inp, lp, lt)


@check
def forward_no_guidance_3x5_bf16(tmp):
    """No guidance_in, B=1, a 3x5 token grid, 5 text tokens, weights stored as BF16."""
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "ng", 23, B=1, gh=3, gw=5, L_txt=5, float_dtype="BF16", guidance=False)
    return _forward_with_diagnosis(w, ck, sd, meta, inp)


@check
def forward_lora_no_guidance_3x5_bf16(tmp):
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "ng", 23, B=1, gh=3, gw=5, L_txt=5, float_dtype="BF16", guidance=False)
    return _lora_forward_with_diagnosis(w, ck, sd, meta, inp, lp, lt, 23 + 200)


@check
def lora_grad_no_guidance_3x5_bf16(tmp):
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "ng", 23, B=1, gh=3, gw=5, L_txt=5, float_dtype="BF16", guidance=False)
    return check_lora_grad(w, ck, sd, meta, inp, lp, lt)


def _lokr_case(tmp, tag, seed, rank, factor, **kw):
    w, ck, sd, meta, inp, _, _ = _tiny_case(tmp, tag, seed, **kw)
    lt = make_lokr(sd, meta, seed + 300, rank=rank, factor=factor)
    lp = w.path("lokr.safetensors")
    st_write(lp, lt)
    return w, ck, sd, meta, inp, lt, lp


@check
def forward_lokr(tmp):
    """LoKr in ComfyUI's names on every module (w2 full where the rank is large, w2_a @ w2_b elsewhere,
    alpha on odd modules), against x kron(w1, w2)^T with torch.kron."""
    w, ck, sd, meta, inp, lt, lp = _lokr_case(tmp, "lk", 41, 4, -1, B=2, gh=4, gw=4, L_txt=8)
    kinds = {k.rsplit(".", 1)[1] for k in lt}
    assert {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"} <= kinds, kinds
    return check_forward(w, ck, sd, meta, inp, lp, lt, label="LoKr: ")


@check
def lokr_grad(tmp):
    w, ck, sd, meta, inp, lt, lp = _lokr_case(tmp, "lk", 41, 4, -1, B=2, gh=4, gw=4, L_txt=8)
    return check_lora_grad(w, ck, sd, meta, inp, lp, lt, label="LoKr: ")


@check
def lokr_grad_factor_4_no_guidance(tmp):
    w, ck, sd, meta, inp, lt, lp = _lokr_case(tmp, "lk4", 43, 2, 4, B=1, gh=3, gw=5, L_txt=5, guidance=False)
    return check_lora_grad(w, ck, sd, meta, inp, lp, lt, label="LoKr factor 4: ")


_HD128 = dict(hidden=256, head_dim=128, depth=1, depth_single=1, in_ch=64, ctx=64, vec_in=32, axes=None)


@check
def forward_head_dim_128_default_axes(tmp):
    """FLUX.1's head_dim 128 and no axes metadata (so RoPE axes [16, 56, 56]), 1+1 blocks, B=2,
    image ids of a 6x8 crop at (row 10, col 50) of a 64x64 token grid (large RoPE angles)."""
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "hd128", 31, B=2, gh=6, gw=8, L_txt=8, origin=(10, 50), **_HD128)
    assert FluxConfig(sd, meta).axes_dim == [16, 56, 56]
    return _forward_with_diagnosis(w, ck, sd, meta, inp)


@check
def lora_grad_head_dim_128_default_axes(tmp):
    w, ck, sd, meta, inp, lt, lp = _tiny_case(tmp, "hd128", 31, B=2, gh=6, gw=8, L_txt=8, origin=(10, 50), **_HD128)
    return check_lora_grad(w, ck, sd, meta, inp, lp, lt)


@check
def make_tiny_checkpoint(tmp):
    """`graft-trainer make-tiny` writes a FLUX-layout checkpoint that this model loads (every tensor
    a BFL name, all used); forward with and without a LoRA matches."""
    w = Work(tmp, "mt")
    d = w.path("tiny")
    run_trainer("make-tiny", d, "--seed", 5)
    ck = os.path.join(d, "model", "transformer.safetensors")
    if not os.path.isfile(ck):
        raise CheckFailed(f"make-tiny wrote no {ck}")
    sd, meta = st_read(ck)
    try:
        model = Flux(sd, meta, torch.float64)
    except KeyError as e:
        raise CheckFailed(f"make-tiny checkpoint lacks BFL tensor {e} (has {sorted(sd)[:8]} ...)")
    cfg = model.cfg
    inp = make_inputs(cfg, 6, B=2, grid_h=2, grid_w=3, L_txt=4)
    with torch.no_grad():
        model.forward(inp)
    unused = sorted(set(sd) - model.used)
    if unused:
        raise CheckFailed(f"make-tiny checkpoint has tensors that are no part of BFL FLUX.1: {unused[:8]}")
    m1 = _forward_with_diagnosis(w, ck, sd, meta, inp)
    lt = make_lora(sd, meta, 7)
    lp = w.path("lora.safetensors")
    st_write(lp, lt)
    m2 = _lora_forward_with_diagnosis(w, ck, sd, meta, inp, lp, lt, 7, label="with LoRA: ")
    return f"[{cfg}] {m1}\n      {m2}"


def run_checks(checks, banner, prefix):
    """Each check gets a fresh temporary folder's path; a failure or an error in the test is a line, never a stop."""
    t0 = time.time()
    print(banner)
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for fn in checks:
            t = time.time()
            try:
                msg = fn(tmp)
                passed += 1
                print(f"ok    {fn.__name__} ({time.time() - t:.1f}s): {msg}")
            except CheckFailed as e:
                failed += 1
                print(f"FAIL  {fn.__name__} ({time.time() - t:.1f}s): {e}")
            except Exception as e:  # an error in the test itself is a failure too
                failed += 1
                tb = traceback.format_exc().strip().splitlines()
                print(f"FAIL  {fn.__name__}: {type(e).__name__}: {e}\n      " + "\n      ".join(tb[-6:]))
            sys.stdout.flush()
    print(f"torch-reference: total {time.time() - t0:.1f}s")
    print(f"torch-reference: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


def main():
    return run_checks(CHECKS, f"torch-reference: torch {torch.__version__}, trainer {TRAINER}", "graft-torchref-")


if __name__ == "__main__":
    sys.exit(main())
