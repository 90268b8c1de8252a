#!/usr/bin/env python3
"""Independent check of the C++ trainer's optimizers: PyTorch references written from the optimizers'
published definitions, which the trainer's parameter trajectories and final states must match.

  adamw      torch.optim.AdamW (decoupled weight decay, bias correction); the reference is torch's own class.
  adamw8bit  bitsandbytes' AdamW8bit, block-wise (blocks of 256 per tensor, absmax per block), moments
             stored as 8-bit codes of create_dynamic_map(signed=True) / (signed=False); the update uses
             the fresh float32 moments (1 - beta formed in float32 and the weight decay applied after
             the step, as its kernel does), the codes are the nearest map values. Every tensor is
             quantized (graft has no min_8bit_size exception).
  lion       Lion (Chen et al. 2023, lion-pytorch): p *= 1 - lr wd; p -= lr sign(b1 m + (1-b1) g);
             m = b2 m + (1-b2) g.
  adafactor  transformers' Adafactor (Shazeer & Stern 2018): factored second moments for 2-D tensors,
             update RMS clipping per tensor, relative step and parameter scaling, optional first moment.
  prodigy    prodigyopt's Prodigy (Mishchenko & Defazio 2023): Adam with the D-adaptation estimate d
             shared by all elements.

Each optimizer gets float32 parameters and gradients; the reference runs in float64 and float32 from the
same inputs and the trainer must be within FLOOR_FACTOR times torch's own float32 error of both. A run
resumed from saved optimizer state halfway must be bit-identical to an uninterrupted run, and an unknown
optimizer type must be refused.

Run: /usr/bin/python3 trainer-cuda/tests/test_optim_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_TRAINER = trainer binary (default <repo>/trainer-cuda/build/graft-trainer);
     GRAFT_OPTIM_DEVICE = passed as optim-check's --device when set (default: the trainer's choice).
Prints ok/FAIL per check with the errors measured, then `torch-reference: N passed, N failed`;
exits non-zero on any failure. A missing binary or command is a FAIL, never a skip.

Trainer contract exercised:
  graft-trainer optim-check <in.safetensors> <out.safetensors>
    in:  p0 F32 [n]; grads F32 [steps, n]; metadata config = JSON {"optimizer": type, "params": {...},
         "lr": [steps values], "segments": [{"offset": o, "shape": [rows, cols] | [size]}, ...] tiling
         [0, n) in order, "resume_at": k (optional: run k steps, save the state, rebuild, run the rest)}
    out: p F32 [steps, n] (parameters after each step); state.<name> tensors; metadata state.<scalar>
         (decimal strings) and state_bytes (total bytes of the state.* tensors)
  type       state tensors                                   state scalars
  adamw      m, v F32 [n]                                    t
  adamw8bit  m_q, v_q U8 [n]; m_absmax, v_absmax F32 [blocks] t
  lion       m F32 [n]                                       -
  adafactor  row, col (2-D segments), v (1-D segments),      step
             m F32 [n] only with beta1
  prodigy    m, v, s, p0 F32 [n]                             d, d_max, d_numerator, k
"""
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_flux_torch import (TRAINER, CheckFailed, Work, rel_err, run_checks, run_trainer,  # noqa: E402
                             st_read, st_write)

torch.set_num_threads(1)

# Errors are max|cpp - ref| / max|ref| within each segment (a tensor's slice of the flat buffer), so a
# segment with tiny gradients or parameters is not hidden by a large one. The tolerance is FLOOR_FACTOR
# times torch's own float32-vs-float64 error on that segment, never below the minimum. Measured floors:
# 3e-8..3e-7 for the trajectories and states, 1e-6..4e-6 for Prodigy's moments. Why this tight, in
# multiples of the tolerance on these cases: the default weight decay 1e-4 left out 18x (AdamW) and 14x
# (AdamW8bit); eps 1e-8 for 1e-6 2.7e4x; beta2 0.99 for 0.999 230x; a Lion weight decay of 1e-4 5x;
# Adafactor's weight decay 1e-4 10x, eps1 0 1e4x, no clipping 4e3x; Prodigy's beta3 0.999 for
# sqrt(0.999) 30x; 1 - 0.999 formed from float32 0.999 (1.3e-5 low) 13x in AdamW's v.
FLOOR_FACTOR = 10
P_TOL_MIN = 1e-6
STATE_TOL_MIN = 1e-6
# Prodigy's d is a ratio of sums over all elements in which p0 - p cancels; measured torch f32 vs f64
# 2e-7..4e-6 on these cases.
D_TOL_MIN = 1e-5
# AdamW8bit: absmax is a max of float32 values, identical up to the rounding of the moments.
ABSMAX_TOL = 1e-6
# A code may differ only where the normalized moment lies within this many float32 ulps (of the terms
# that formed it) of a midpoint between two map values; at most this fraction of the codes may differ.
Q_AMBIG_ULPS = 16
Q_MISMATCH_MAX = 1e-3
# Lion: sign(c) of a c this close to 0 (relative to its two terms) depends on rounding; the cases here are
# chosen so that none is, and any that were would be left out of the comparison and reported.
LION_SIGN_MARGIN = 1e-5

BLOCK = 256  # bitsandbytes' block size for the 8-bit optimizers
F32_EPS = float(np.finfo(np.float32).eps)
DEVICE_ARGS = ["--device", os.environ["GRAFT_OPTIM_DEVICE"]] if os.environ.get("GRAFT_OPTIM_DEVICE") else []

# ---------------------------------------------------------------------------------------------
# Cases: a flat parameter buffer cut into tensors of different shapes, gradients of very different
# scales per tensor (so eps and the per-tensor statistics matter), and a scheduled lr.

SHAPES = [(24, 40), (100,), (17, 45), (300,), (3, 5), (1, 50)]
GRAD_SCALE = [1.0, 1e-3, 0.1, 1e-6, 3.0, 0.01]


class Case:
    def __init__(self, seed, shapes=SHAPES, steps=8, grad_scale=GRAD_SCALE, p_scale=0.05, lr=1e-3,
                 step_scale=None, lr_values=None):
        rng = np.random.default_rng(seed)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.n = int(sum(self.sizes))
        self.steps = steps
        ps = p_scale if isinstance(p_scale, (list, tuple)) else [p_scale] * len(self.shapes)
        self.p0 = np.concatenate([rng.standard_normal(s) * ps[i] for i, s in enumerate(self.sizes)]).astype(np.float32)
        # A persistent direction plus noise: moments build up and Prodigy's d grows, as in training.
        base = rng.standard_normal(self.n)
        g = 0.6 * base[None] + rng.standard_normal((steps, self.n))
        scale = np.concatenate([np.full(s, grad_scale[i]) for i, s in enumerate(self.sizes)])
        st = np.ones(steps) if step_scale is None else np.asarray(step_scale, np.float64)
        self.grads = (g * scale[None] * st[:, None]).astype(np.float32)
        if lr_values is not None:
            self.lr = [float(x) for x in lr_values]
        else:  # every step a different value: the trainer must use each step's own
            self.lr = [lr * (0.55 + 0.45 * math.cos(math.pi * t / steps)) for t in range(steps)]
        assert len(self.lr) == steps

    def segments_json(self):
        return [{"offset": o, "shape": list(s)} for o, s in zip(self.offsets, self.shapes)]

    def pieces(self):
        return [(f"seg{i}{list(s)}", slice(o, o + z)) for i, (s, o, z) in
                enumerate(zip(self.shapes, self.offsets, self.sizes))]

    def prefix(self, k):
        """The same case cut to its first k steps."""
        c = Case.__new__(Case)
        c.__dict__.update(self.__dict__)
        c.steps, c.grads, c.lr = k, self.grads[:k], self.lr[:k]
        return c


# ---------------------------------------------------------------------------------------------
# Running the trainer

def st_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n).decode("utf-8"))


class Result:
    def __init__(self, p, state, scalars, dtypes, state_bytes):
        self.p, self.state, self.scalars, self.dtypes, self.state_bytes = p, state, scalars, dtypes, state_bytes


def run_optim(w, tag, case, optimizer, params, resume_at=None):
    cfg = {"optimizer": optimizer, "params": params, "lr": case.lr, "segments": case.segments_json()}
    if resume_at is not None:
        cfg["resume_at"] = resume_at
    ip, op = w.path(tag + "_in.safetensors"), w.path(tag + "_out.safetensors")
    st_write(ip, {"p0": case.p0, "grads": case.grads}, {"config": json.dumps(cfg)})
    run_trainer("optim-check", ip, op, *DEVICE_ARGS)
    tensors, meta = st_read(op)
    header = st_header(op)
    if "p" not in tensors:
        raise CheckFailed(f"optim-check output has no `p` tensor (has {sorted(tensors)})")
    if header["p"]["dtype"] != "F32" or list(tensors["p"].shape) != [case.steps, case.n]:
        raise CheckFailed(f"p is {header['p']['dtype']} {list(tensors['p'].shape)}, expected F32 {[case.steps, case.n]}")
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    dtypes = {k[len("state."):]: header[k]["dtype"] for k in tensors if k.startswith("state.")}
    scalars = {k[len("state."):]: v for k, v in meta.items() if k.startswith("state.")}
    nbytes = sum(header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in tensors if k.startswith("state."))
    if "state_bytes" not in meta:
        raise CheckFailed(f"optim-check output has no state_bytes metadata (has {sorted(meta)})")
    try:
        sb = int(meta["state_bytes"])
    except ValueError:
        raise CheckFailed(f"state_bytes {meta['state_bytes']!r} is not a decimal integer")
    if sb != nbytes:
        raise CheckFailed(f"state_bytes {sb} but the state.* tensors hold {nbytes} bytes "
                          f"({ {k: dtypes[k] + str(list(v.shape)) for k, v in state.items()} })")
    return Result(tensors["p"], state, scalars, dtypes, sb)


def expect_state(res, tensors, scalars, optional=()):
    """tensors: name -> (dtype, shape). Missing, unexpected, mistyped or misshapen state is a failure;
    names in `optional` may be absent (an empty tensor)."""
    problems = []
    for k, (dt, shape) in tensors.items():
        if k not in res.state:
            if not (k in optional and int(np.prod(shape)) == 0):
                problems.append(f"state.{k} missing")
            continue
        if res.dtypes[k] != dt or list(res.state[k].shape) != list(shape):
            problems.append(f"state.{k} is {res.dtypes[k]} {list(res.state[k].shape)}, expected {dt} {list(shape)}")
    extra = sorted(set(res.state) - set(tensors))
    if extra:
        problems.append(f"unexpected state tensors {['state.' + k for k in extra]}")
    for k in scalars:
        if k not in res.scalars:
            problems.append(f"metadata state.{k} missing (has {sorted(res.scalars)})")
        else:
            try:
                float(res.scalars[k])
            except ValueError:
                problems.append(f"metadata state.{k} = {res.scalars[k]!r} is not a number")
    if problems:
        raise CheckFailed("; ".join(problems))


def compare_pieces(label, got, ref64, ref32, pieces, tol_min, keep=None):
    """Per piece (a slice of the last axis): rel err of got vs both references and the tolerance from
    torch's float32 error there. Returns (message, problems)."""
    got = np.asarray(got)
    if list(got.shape) != list(ref64.shape):
        return f"{label} shape {list(got.shape)}", [f"{label} has shape {list(got.shape)}, expected {list(ref64.shape)}"]
    worst, problems, left_out = None, [], 0
    for name, sl in pieces:
        g, r64, r32 = got[..., sl], ref64[..., sl], ref32[..., sl]
        if keep is not None:
            k = keep[..., sl]
            left_out += int(k.size - k.sum())
            g, r64, r32 = g[k], r64[k], r32[k]
        if g.size == 0:
            continue
        try:
            _, e64, s = rel_err(g, r64)
            _, e32, _ = rel_err(g, r32)
        except CheckFailed as e:
            problems.append(f"{label} {name}: {e}")
            continue
        _, floor, _ = rel_err(r32, r64)
        tol = max(tol_min, FLOOR_FACTOR * floor)
        ratio = max(e64, e32) / tol
        if worst is None or ratio > worst[0]:
            worst = (ratio, name, e64, e32, floor, tol, s)
        if not (e64 < tol and e32 < tol):
            problems.append(f"{label} {name}: rel {e64:.3g} vs f64, {e32:.3g} vs f32 (max|ref| {s:.3g}; "
                            f"torch f32 vs f64 {floor:.3g}; tol {tol:.3g})")
    if worst is None:
        return f"{label}: nothing compared", problems + [f"{label}: nothing compared"]
    _, name, e64, e32, floor, tol, _ = worst
    msg = (f"{label} {list(got.shape)} worst {name} rel {e64:.2g} (f64) {e32:.2g} (f32), torch f32 vs f64 "
           f"{floor:.2g}, tol {tol:.2g}" + (f", {left_out} values left out" if left_out else ""))
    return msg, problems


def compare_scalar(label, got_str, ref64, ref32, tol_min):
    got = float(got_str)
    scale = max(abs(ref64), 1e-300)
    e64, e32, floor = abs(got - ref64) / scale, abs(got - ref32) / scale, abs(ref32 - ref64) / scale
    tol = max(tol_min, FLOOR_FACTOR * floor)
    msg = f"{label} {got:.8g} (ref {ref64:.8g}, rel {max(e64, e32):.2g}, tol {tol:.2g})"
    return msg, ([] if (e64 < tol and e32 < tol and math.isfinite(got)) else [msg])


def expect_count(res, name, value):
    if name not in res.scalars:
        return [f"metadata state.{name} missing"]
    got = float(res.scalars[name])
    return [] if got == value else [f"state.{name} = {res.scalars[name]}, expected {value}"]


def finish(msgs, problems):
    msg = "; ".join(msgs)
    if problems:
        raise CheckFailed(msg + "\n      " + "\n      ".join(problems))
    return msg


def worst_piece_err(got, ref, pieces):
    return max(rel_err(got[..., sl], ref[..., sl])[1] for _, sl in pieces)


def rounded_betas(params, defaults, beta3=False):
    """params with betas (and Prodigy's beta3) rounded to float32: a trainer that keeps these constants
    in float32 forms 1 - beta2 = 1 - 0.999f 1.3e-5 below 0.001, where torch forms it in double."""
    q = dict(params)
    q["betas"] = [float(np.float32(b)) for b in params.get("betas", defaults)]
    if beta3:
        b3 = params.get("beta3")
        q["beta3"] = float(np.float32(math.sqrt(q["betas"][1]) if b3 is None else b3))
    return q


def f32_constants_note(errs):
    """A failure's hint: the errors against a reference whose betas are float32."""
    return ("hint: against the reference with betas rounded to float32 before forming 1 - beta (what a "
            "trainer keeping them in float32 computes; torch forms 1 - beta in double): " +
            ", ".join(f"{k} rel {v:.2g}" for k, v in errs.items()))


# ---------------------------------------------------------------------------------------------
# AdamW: torch.optim.AdamW itself, and a transcription of its documented update (for the self-check).

def adamw_defaults(params):
    b1, b2 = params.get("betas", [0.9, 0.999])
    return float(b1), float(b2), float(params.get("eps", 1e-6)), float(params.get("weight_decay", 1e-4))


def adamw_torch(case, params, dtype):
    b1, b2, eps, wd = adamw_defaults(params)
    p = torch.nn.Parameter(torch.tensor(case.p0, dtype=dtype))
    opt = torch.optim.AdamW([p], lr=case.lr[0], betas=(b1, b2), eps=eps, weight_decay=wd)
    traj = []
    for t in range(case.steps):
        opt.param_groups[0]["lr"] = case.lr[t]
        p.grad = torch.tensor(case.grads[t], dtype=dtype)
        opt.step()
        traj.append(p.detach().numpy().astype(np.float64))
    st = opt.state[p]
    return np.stack(traj), {"m": st["exp_avg"].numpy().astype(np.float64),
                            "v": st["exp_avg_sq"].numpy().astype(np.float64)}


def adamw_formula(case, params, dtype):
    b1, b2, eps, wd = adamw_defaults(params)
    p = torch.tensor(case.p0, dtype=dtype)
    m, v, traj = torch.zeros_like(p), torch.zeros_like(p), []
    for t in range(1, case.steps + 1):
        g, lr = torch.tensor(case.grads[t - 1], dtype=dtype), case.lr[t - 1]
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (torch.sqrt(v) / math.sqrt(1 - b2 ** t) + eps)
        traj.append(p.numpy().astype(np.float64))
    return np.stack(traj), {"m": m.numpy(), "v": v.numpy()}


# ---------------------------------------------------------------------------------------------
# AdamW8bit (bitsandbytes, block-wise). The moments' path is float32 throughout (numpy float32 ops:
# no fused multiply-add, as bitsandbytes' kernel writes them), so codes are comparable; the parameter
# path runs in float64 and float32 from those same moments.

def dynamic_map(signed, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' create_dynamic_map: for each decade 10^(i-6), i = 0..6, the means of adjacent points
    of torch.linspace(0.1, 1, k+1) (float32) for k = 2^i (signed, both signs) or 2^(i+1) (unsigned),
    scaled by the decade in float32; then 0 and 1.0; 256 values sorted."""
    data = []
    non_sign_bits = total_bits - 1
    additional = 2 ** (non_sign_bits - max_exponent_bits) - 1
    assert additional == 0  # the 8-bit map: no linear tail
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed else \
            2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        b = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (b[:-1] + b[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 2 ** total_bits
    return np.array(sorted(data), dtype=np.float32)


QMAP_S = dynamic_map(True)
QMAP_U = dynamic_map(False)


def block_ids(shapes):
    """Block of each element: each tensor cut into blocks of BLOCK from its own start."""
    ids, nb = [], 0
    for s in shapes:
        size = int(np.prod(s))
        ids.append(nb + np.arange(size) // BLOCK)
        nb += -(-size // BLOCK)
    return np.concatenate(ids), nb


def quantize(x, qmap):
    """Index of the map value nearest to x (float32), ties to the lower index."""
    hi = np.clip(np.searchsorted(qmap, x, side="left"), 1, 255)
    lo = hi - 1
    x64 = x.astype(np.float64)
    d_lo = np.abs(x64 - qmap[lo].astype(np.float64))
    d_hi = np.abs(qmap[hi].astype(np.float64) - x64)
    return np.where(d_hi < d_lo, hi, lo).astype(np.uint8)


def midpoint_distance(x, qmap):
    mid = (qmap[:-1].astype(np.float64) + qmap[1:].astype(np.float64)) / 2
    j = np.searchsorted(mid, x.astype(np.float64))
    a = np.abs(x - mid[np.clip(j - 1, 0, len(mid) - 1)])
    b = np.abs(x - mid[np.clip(j, 0, len(mid) - 1)])
    return np.minimum(a, b)


def half_gap(code, qmap):
    """Half the larger gap to a neighbouring map value: the largest error of a nearest-value code."""
    q = qmap.astype(np.float64)
    left = np.where(code > 0, q[code] - q[np.maximum(code.astype(np.int64) - 1, 0)], 0.0)
    right = np.where(code < 255, q[np.minimum(code.astype(np.int64) + 1, 255)] - q[code], 0.0)
    return np.maximum(left, right) / 2


def adamw8bit_ref(case, params, quantized=True):
    """Returns dict: P64, P32 [steps, n]; final state m_q, v_q, m_absmax, v_absmax; the first step's
    fresh moments m1, v1 (float32). Where the trainer may legitimately differ (float rounding putting a
    value on the other side of a midpoint between two map values), with steps counted from 1 and
    steps + 1 meaning never: amb_elem [n], the step whose code was within rounding of a midpoint;
    amb_block [nblocks], the first step whose absmax may differ because of such an element."""
    b1, b2, eps, wd = adamw_defaults(params)
    f = np.float32
    b1f, b2f, epsf, wdf = f(b1), f(b2), f(eps), f(wd)
    c1, c2 = f(1) - b1f, f(1) - b2f  # (1 - beta) in float32, as bitsandbytes' kernel forms it
    blk, nb = block_ids(case.shapes)
    n, T = case.n, case.steps
    m_q, v_q = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    m_abs, v_abs = np.zeros(nb, np.float32), np.zeros(nb, np.float32)
    m_prev, v_prev = np.zeros(n, np.float32), np.zeros(n, np.float32)  # used when not quantized
    p64, p32 = case.p0.astype(np.float64), case.p0.copy()
    P64, P32 = np.zeros((T, n)), np.zeros((T, n), np.float32)
    amb_elem, amb_block = np.full(n, T + 1), np.full(nb, T + 1)
    # Bound on |trainer - reference| of an element's dequantized moment once its code was ambiguous:
    # its fresh moment differs by beta times the previous bound, and the two codes of values that far
    # apart dequantize at most one largest map gap (times absmax) further apart.
    dm, dv = np.zeros(n), np.zeros(n)
    gap_s, gap_u = float(np.max(np.diff(QMAP_S))), float(np.max(np.diff(QMAP_U)))
    out = {}
    for t in range(1, T + 1):
        g, lr = case.grads[t - 1], case.lr[t - 1]
        if quantized:
            md = QMAP_S[m_q] * m_abs[blk]
            vd = QMAP_U[v_q] * v_abs[blk]
        else:
            md, vd = m_prev, v_prev
        m_terms, v_terms = np.abs(b1f * md) + np.abs(c1 * g), np.abs(b2f * vd) + np.abs(c2 * g * g)
        m = b1f * md + c1 * g
        v = b2f * vd + c2 * (g * g)
        if t == 1:
            out["m1"], out["v1"] = m.copy(), v.copy()
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        m64, v64 = m.astype(np.float64), v.astype(np.float64)
        # bitsandbytes' kernel decays the weights after the Adam step (torch's AdamW before it).
        p64 = (p64 - lr / bc1 * m64 / (np.sqrt(v64) / math.sqrt(bc2) + eps)) * (1 - lr * wd)
        p32 = p32 - f(lr / bc1) * (m / (np.sqrt(v) / f(math.sqrt(bc2)) + epsf))
        p32 = p32 * (f(1) - f(lr) * wdf)
        P64[t - 1], P32[t - 1] = p64, p32
        m_prev, v_prev = m, v
        if not quantized:
            continue
        # absmax of a block is uncertain when an element with an uncertain moment could be its largest.
        tainted = amb_elem < t
        dm, dv = b1 * dm, b2 * dv
        for x_src, d in ((m, dm), (v, dv)):
            a = np.abs(x_src.astype(np.float64))
            clean = np.zeros(nb)
            np.maximum.at(clean, blk[~tainted], a[~tainted])
            hi = np.zeros(nb)
            np.maximum.at(hi, blk[tainted], (a + d)[tainted])
            for b in np.flatnonzero((hi >= clean) & (hi > 0)):
                amb_block[b] = min(amb_block[b], t)
        m_abs, v_abs = np.zeros(nb, np.float32), np.zeros(nb, np.float32)
        np.maximum.at(m_abs, blk, np.abs(m))
        np.maximum.at(v_abs, blk, np.abs(v))
        codes = {}
        for k, x_src, terms, absmax, qmap in (("m", m, m_terms, m_abs, QMAP_S), ("v", v, v_terms, v_abs, QMAP_U)):
            a = absmax[blk]
            safe = np.where(a > 0, a, 1)
            x = np.where(a > 0, x_src / safe, 0).astype(np.float32)
            codes[k] = quantize(x, qmap)
            # How far rounding of the moment (its terms), of its division and of the map could move x.
            slack = Q_AMBIG_ULPS * F32_EPS * (np.where(a > 0, terms / safe, 0) + np.abs(x) + 1e-30)
            amb = (midpoint_distance(x, qmap) <= slack) & (amb_elem > T)
            amb_elem[amb] = t
        m_q, v_q = codes["m"], codes["v"]
        tainted = amb_elem <= t
        dm = np.where(tainted, dm + gap_s * m_abs[blk], 0)
        dv = np.where(tainted, dv + gap_u * v_abs[blk], 0)
    out.update(P64=P64, P32=P32.astype(np.float64), m_q=m_q, v_q=v_q, m_absmax=m_abs, v_absmax=v_abs,
               amb_elem=amb_elem, amb_block=amb_block, blk=blk, nblocks=nb)
    return out


# ---------------------------------------------------------------------------------------------
# Lion (lion-pytorch's update_fn)

def lion_ref(case, params, dtype):
    b1, b2 = (float(b) for b in params.get("betas", [0.9, 0.99]))
    wd = float(params.get("weight_decay", 0.0))
    p = torch.tensor(case.p0, dtype=dtype)
    m = torch.zeros_like(p)
    traj, margin = [], []
    for t in range(case.steps):
        g, lr = torch.tensor(case.grads[t], dtype=dtype), case.lr[t]
        p.mul_(1 - lr * wd)
        c = m.clone().mul_(b1).add(g, alpha=1 - b1)
        margin.append((c.abs() / (m.abs() * b1 + g.abs() * (1 - b1) + 1e-300)).numpy().astype(np.float64))
        p.add_(torch.sign(c), alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)
        traj.append(p.numpy().astype(np.float64))
    return np.stack(traj), {"m": m.numpy().astype(np.float64)}, np.stack(margin)


# ---------------------------------------------------------------------------------------------
# Adafactor (transformers.optimization.Adafactor.step), one tensor per segment.

def adafactor_options(params):
    eps = params.get("eps", [1e-30, 1e-3])
    return dict(eps1=float(eps[0]), eps2=float(eps[1]), clip=float(params.get("clip_threshold", 1.0)),
                decay=float(params.get("decay_rate", -0.8)), beta1=params.get("beta1"),
                wd=float(params.get("weight_decay", 0.0)),
                scale_parameter=bool(params.get("scale_parameter", False)),
                relative_step=bool(params.get("relative_step", False)),
                warmup_init=bool(params.get("warmup_init", False)))


def adafactor_ref(case, params, dtype):
    o = adafactor_options(params)
    p = torch.tensor(case.p0, dtype=dtype)
    st = []
    for s in case.shapes:
        d = {}
        if len(s) == 2:
            d["row"], d["col"] = torch.zeros(s[0], dtype=dtype), torch.zeros(s[1], dtype=dtype)
        else:
            d["v"] = torch.zeros(s, dtype=dtype)
        if o["beta1"] is not None:
            d["m"] = torch.zeros(s, dtype=dtype)
        st.append(d)
    traj, lrs = [], []
    for t in range(case.steps):
        step = t + 1
        lrs_t = []
        for i, (s, off, size) in enumerate(zip(case.shapes, case.offsets, case.sizes)):
            ps = p[off:off + size].view(s)
            g = torch.tensor(case.grads[t, off:off + size], dtype=dtype).view(s)
            rms_p = float(ps.norm(2) / math.sqrt(size))  # before this step's update
            lr = case.lr[t]
            if o["relative_step"]:
                min_step = 1e-6 * step if o["warmup_init"] else 1e-2
                lr = min(min_step, 1.0 / math.sqrt(step))
            if o["scale_parameter"]:
                lr = max(o["eps2"], rms_p) * lr
            lrs_t.append(lr)
            beta2t = 1.0 - math.pow(step, o["decay"])
            u = g ** 2 + o["eps1"]
            d = st[i]
            if len(s) == 2:
                d["row"].mul_(beta2t).add_(u.mean(dim=-1), alpha=1.0 - beta2t)
                d["col"].mul_(beta2t).add_(u.mean(dim=-2), alpha=1.0 - beta2t)
                r = (d["row"] / d["row"].mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
                c = d["col"].unsqueeze(-2).rsqrt()
                upd = r * c * g
            else:
                d["v"].mul_(beta2t).add_(u, alpha=1.0 - beta2t)
                upd = d["v"].rsqrt() * g
            rms_u = upd.norm(2) / math.sqrt(size)
            upd = upd / (rms_u / o["clip"]).clamp(min=1.0)
            upd = upd * lr
            if o["beta1"] is not None:
                d["m"].mul_(float(o["beta1"])).add_(upd, alpha=1 - float(o["beta1"]))
                upd = d["m"]
            if o["wd"] != 0:
                ps.add_(ps, alpha=-o["wd"] * lr)
            ps.add_(-upd)
        traj.append(p.numpy().astype(np.float64))
        lrs.append(lrs_t)
    out = {}
    two = [d for d, s in zip(st, case.shapes) if len(s) == 2]
    one = [d for d, s in zip(st, case.shapes) if len(s) == 1]
    out["row"] = np.concatenate([d["row"].numpy() for d in two] or [np.zeros(0)]).astype(np.float64)
    out["col"] = np.concatenate([d["col"].numpy() for d in two] or [np.zeros(0)]).astype(np.float64)
    out["v"] = np.concatenate([d["v"].numpy() for d in one] or [np.zeros(0)]).astype(np.float64)
    if o["beta1"] is not None:
        out["m"] = np.concatenate([d["m"].reshape(-1).numpy() for d in st]).astype(np.float64)
    return np.stack(traj), out, lrs


def adafactor_state_pieces(case):
    """Where each segment's part of row, col, v lies in their concatenations."""
    pieces = {"row": [], "col": [], "v": []}
    pos = {"row": 0, "col": 0, "v": 0}
    for i, s in enumerate(case.shapes):
        parts = (("row", s[0]), ("col", s[1])) if len(s) == 2 else (("v", s[0]),)
        for k, z in parts:
            pieces[k].append((f"seg{i}{list(s)}", slice(pos[k], pos[k] + z)))
            pos[k] += z
    return pieces, pos


# ---------------------------------------------------------------------------------------------
# Prodigy (prodigyopt.Prodigy.step, one parameter group, the flat buffer as its one tensor).

def prodigy_options(params):
    b1, b2 = (float(b) for b in params.get("betas", [0.9, 0.999]))
    b3 = params.get("beta3")
    return dict(b1=b1, b2=b2, b3=math.sqrt(b2) if b3 is None else float(b3), eps=float(params.get("eps", 1e-6)),
                wd=float(params.get("weight_decay", 0.0)), decouple=bool(params.get("decouple", True)),
                bias_correction=bool(params.get("use_bias_correction", False)),
                safeguard=bool(params.get("safeguard_warmup", False)), d0=float(params.get("d0", 1e-6)),
                d_coef=float(params.get("d_coef", 1.0)), growth=float(params.get("growth_rate", math.inf)))


def prodigy_ref(case, params, dtype):
    """float32: prodigyopt as it runs (torch float32 sums, .item() into Python floats); float64: all
    in double. Returns P, state, scalars (final), d after each step."""
    o = prodigy_options(params)
    p = torch.tensor(case.p0, dtype=dtype)
    p_init = p.clone()
    m, v, s = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
    d, d_max, d_num, k = o["d0"], o["d0"], 0.0, 0
    d0 = o["d0"]
    traj, ds = [], []
    for t in range(case.steps):
        g, lr = torch.tensor(case.grads[t], dtype=dtype), case.lr[t]
        bias = ((1 - o["b2"] ** (k + 1)) ** 0.5) / (1 - o["b1"] ** (k + 1)) if o["bias_correction"] else 1
        dlr = d * lr * bias
        d_num *= o["b3"]
        if o["wd"] != 0 and not o["decouple"]:
            g = g.add(p, alpha=o["wd"])
        d_den = 0.0
        if lr > 0.0:
            d_num += (d / d0) * dlr * torch.dot(g, p_init - p).item()
            m.mul_(o["b1"]).add_(g, alpha=d * (1 - o["b1"]))
            v.mul_(o["b2"]).addcmul_(g, g, value=d * d * (1 - o["b2"]))
            s.mul_(o["b3"]).add_(g, alpha=(d / d0) * (d if o["safeguard"] else dlr))
            d_den += s.abs().sum().item()
        if d_den == 0:
            raise AssertionError("prodigy reference: all-zero gradients")
        if lr > 0.0:
            d_hat = o["d_coef"] * d_num / d_den
            if d == d0:
                d = max(d, d_hat)
            d_max = max(d_max, d_hat)
            d = min(d_max, d * o["growth"])
        denom = v.sqrt().add_(d * o["eps"])
        if o["wd"] != 0 and o["decouple"]:
            p.add_(p, alpha=-o["wd"] * dlr)
        p.addcdiv_(m, denom, value=-dlr)
        k += 1
        traj.append(p.numpy().astype(np.float64))
        ds.append(d)
    state = {k_: t_.numpy().astype(np.float64) for k_, t_ in (("m", m), ("v", v), ("s", s), ("p0", p_init))}
    return np.stack(traj), state, {"d": d, "d_max": d_max, "d_numerator": d_num, "k": k}, ds


# ---------------------------------------------------------------------------------------------
# The checks

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def reference_self_check(tmp):
    """Torch-only: the references against torch.optim.AdamW, against each other and against closed forms
    of their first step; the dynamic maps' shape."""
    msgs = []
    # Dynamic maps: 256 sorted distinct values in [-1, 1], containing 0 and 1; the signed map's negative
    # values mirror its positive ones except 1.0 (so -1 is not representable); the unsigned map is >= 0.
    for name, q, signed in (("signed", QMAP_S, True), ("unsigned", QMAP_U, False)):
        if q.shape != (256,) or q.dtype != np.float32 or not np.all(np.diff(q) > 0):
            raise CheckFailed(f"{name} map: shape {q.shape} {q.dtype}, strictly increasing {np.all(np.diff(q) > 0)}")
        if q.max() != 1.0 or 0.0 not in q or (q.min() < 0) != signed:
            raise CheckFailed(f"{name} map: max {q.max()} min {q.min()}, has 0 {0.0 in q}")
    pos, neg = QMAP_S[QMAP_S > 0], QMAP_S[QMAP_S < 0]
    if len(neg) != 127 or len(pos) != 128 or not np.array_equal(np.sort(-neg), pos[:-1]):
        raise CheckFailed(f"signed map: {len(neg)} negative, {len(pos)} positive values, mirrored "
                          f"{np.array_equal(np.sort(-neg), pos[:-1]) if len(neg) + 1 == len(pos) else False}")
    # The same maps from the closed form (exact linspace in float64, rounded once): torch's float32
    # linspace and scaling may round differently by an ulp or so.
    exact = []
    for i in range(7):
        for signed, q in ((True, QMAP_S), (False, QMAP_U)):
            k = 2 ** i if signed else 2 ** (i + 1)
            b = 0.1 + 0.9 * np.arange(k + 1) / k
            exact.append((signed, 10.0 ** (i - 6) * (b[:-1] + b[1:]) / 2))
    ex_s = np.sort(np.concatenate([e for s, e in exact if s] + [-e for s, e in exact if s] + [[0.0, 1.0]]))
    ex_u = np.sort(np.concatenate([e for s, e in exact if not s] + [[0.0, 1.0]]))
    map_ulps = max(float(np.max(np.abs(QMAP_S - ex_s) / np.maximum(np.abs(ex_s), 1e-30))),
                   float(np.max(np.abs(QMAP_U - ex_u) / np.maximum(np.abs(ex_u), 1e-30)))) / F32_EPS
    if map_ulps > 4:
        raise CheckFailed(f"dynamic maps differ from their closed form by {map_ulps:.2f} ulp")
    msgs.append(f"maps 256 sorted, max 1, signed min {QMAP_S[0]:.6g}, unsigned min>0 {QMAP_U[1]:.3g}, "
                f"closed form within {map_ulps:.2f} ulp")
    # Nearest-code search vs brute force.
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-1, 1, 4000), rng.standard_normal(2000) * 1e-4, [-1.0, 1.0, 0.0]]).astype(np.float32)
    for q in (QMAP_S, QMAP_U):
        xx = np.abs(x) if q is QMAP_U else x
        brute = np.argmin(np.abs(xx[:, None].astype(np.float64) - q[None].astype(np.float64)), axis=1)
        if not np.array_equal(quantize(xx, q), brute.astype(np.uint8)):
            raise CheckFailed("nearest-code search disagrees with a brute-force argmin")
    # AdamW: torch.optim.AdamW vs the documented formula in float64.
    case = Case(11)
    for params in ({}, {"betas": [0.8, 0.95], "eps": 1e-8, "weight_decay": 0.1}):
        P, S = adamw_torch(case, params, torch.float64)
        Q, R = adamw_formula(case, params, torch.float64)
        e = max(rel_err(Q, P)[1], rel_err(R["m"], S["m"])[1], rel_err(R["v"], S["v"])[1])
        if e > 1e-12:
            raise CheckFailed(f"AdamW formula vs torch.optim.AdamW {params}: rel {e:.3g}")
    msgs.append(f"AdamW formula = torch.optim.AdamW (f64 rel {e:.2g})")
    # AdamW8bit without quantization is AdamW with float32 moments.
    r = adamw8bit_ref(case, {}, quantized=False)
    P64, _ = adamw_torch(case, {}, torch.float64)
    P32, _ = adamw_torch(case, {}, torch.float32)
    e8 = max(rel_err(r["P64"][:, sl], P64[:, sl])[1] for _, sl in case.pieces())
    fl = max(rel_err(P32[:, sl], P64[:, sl])[1] for _, sl in case.pieces())
    if e8 > max(P_TOL_MIN, FLOOR_FACTOR * fl):
        raise CheckFailed(f"unquantized 8-bit reference vs torch AdamW: rel {e8:.3g} (torch f32 vs f64 {fl:.3g})")
    msgs.append(f"8-bit ref unquantized = AdamW (rel {e8:.2g})")
    # AdamW8bit: after one step the codes dequantize to within half a map gap of (1-b1) g and (1-b2) g^2.
    c1 = case.prefix(1)
    r = adamw8bit_ref(c1, {})
    m_d = QMAP_S[r["m_q"]].astype(np.float64) * r["m_absmax"][r["blk"]]
    err = np.abs(m_d - 0.1 * c1.grads[0].astype(np.float64))
    bound = half_gap(r["m_q"], QMAP_S) * r["m_absmax"][r["blk"]] + 4 * F32_EPS * np.abs(m_d)
    if not np.all(err <= bound):
        raise CheckFailed(f"8-bit ref: first-step m off by up to {np.max(err / bound):.3g} half gaps")
    # Lion, first step from m = 0: p -= lr sign(g) (after decay); m = (1 - b2) g.
    lc = case.prefix(1)
    P, S, _ = lion_ref(lc, {"weight_decay": 0.3}, torch.float64)
    lr = lc.lr[0]
    want = lc.p0.astype(np.float64) * (1 - lr * 0.3) - lr * np.sign(lc.grads[0]).astype(np.float64)
    e = max(rel_err(P[0], want)[1], rel_err(S["m"], 0.01 * lc.grads[0].astype(np.float64))[1])
    if e > 1e-14:
        raise CheckFailed(f"Lion first step vs closed form: rel {e:.3g}")
    # Adafactor: with g^2 of rank 1 (g = outer(a, b)) and eps1 0, the factored second moment is exact,
    # so a 2-D tensor's first step equals the unfactored one's: the same tensor given as 1-D.
    # (small integers over powers of two: g and g^2 exact in float32, so g^2 is exactly of rank 1)
    rng = np.random.default_rng(5)
    a, b = rng.integers(1, 8, 6) / 4.0, rng.integers(1, 16, 9) * rng.choice([-1, 1], 9) / 8.0
    g2 = np.outer(a, b).reshape(-1)
    for decay_steps in (1, 3):
        cf = Case(3, shapes=[(6, 9)], steps=decay_steps, grad_scale=[1.0])
        cu = Case(3, shapes=[(54,)], steps=decay_steps, grad_scale=[1.0])
        cf.grads = cu.grads = np.stack([g2 * (1 + 0.5 * k) for k in range(decay_steps)]).astype(np.float32)
        cu.p0 = cf.p0
        prm = {"eps": [0.0, 1e-3], "beta1": 0.9, "weight_decay": 0.01}
        Pf, _, _ = adafactor_ref(cf, prm, torch.float64)
        Pu, _, _ = adafactor_ref(cu, prm, torch.float64)
        ea = rel_err(Pf, Pu)[1]
        if ea > 1e-12:
            raise CheckFailed(f"Adafactor factored vs unfactored on a rank-1 g^2 ({decay_steps} steps): rel {ea:.3g}")
    # Adafactor first step by hand, 1-D: v = g^2 + eps1, u = g / sqrt(v) (~ sign g), RMS-clipped to 1.
    c1 = Case(7, shapes=[(5,)], steps=1, grad_scale=[1.0])
    P, S, lrs = adafactor_ref(c1, {"relative_step": True, "scale_parameter": True}, torch.float64)
    g = c1.grads[0].astype(np.float64)
    u = g / np.sqrt(g * g + 1e-30)
    u /= max(np.sqrt(np.mean(u * u)), 1.0)
    lr_h = 1e-2 * max(1e-3, float(np.sqrt(np.mean(c1.p0.astype(np.float64) ** 2))))
    ea = max(rel_err(P[0], c1.p0 - lr_h * u)[1], abs(lrs[0][0] - lr_h) / lr_h)
    if ea > 1e-14:
        raise CheckFailed(f"Adafactor first step vs hand computation: rel {ea:.3g}")
    msgs.append(f"Adafactor factored = unfactored on rank-1 g^2, first step by hand (rel {ea:.2g})")
    # Prodigy, first step: p0 - p = 0 so d stays d0; m = d0 (1-b1) g, v = d0^2 (1-b2) g^2,
    # p -= d0 m / (sqrt(v) + d0 eps).
    pc = case.prefix(1)
    pc.lr = [1.0]
    P, S, sc, ds = prodigy_ref(pc, {}, torch.float64)
    g = pc.grads[0].astype(np.float64)
    d0 = 1e-6
    mh, vh = d0 * 0.1 * g, d0 * d0 * 0.001 * g * g
    want = pc.p0 - d0 * mh / (np.sqrt(vh) + d0 * 1e-6)
    ep = max(rel_err(P[0], want)[1], rel_err(S["m"], mh)[1], rel_err(S["v"], vh)[1], abs(ds[0] - d0) / d0)
    if ep > 1e-12:
        raise CheckFailed(f"Prodigy first step vs hand computation: rel {ep:.3g}")
    msgs.append(f"Lion and Prodigy first steps by hand (rel {ep:.2g})")
    return "; ".join(msgs)


# --- AdamW ---

def adamw_check(tmp, tag, case, params):
    w = Work(tmp, tag)
    res = run_optim(w, "run", case, "adamw", params)
    expect_state(res, {"m": ("F32", [case.n]), "v": ("F32", [case.n])}, ["t"])
    P64, S64 = adamw_torch(case, params, torch.float64)
    P32, S32 = adamw_torch(case, params, torch.float32)
    msgs, problems = [], expect_count(res, "t", case.steps)
    for label, got, r64, r32, tol in (("p", res.p, P64, P32, P_TOL_MIN),
                                      ("m", res.state["m"], S64["m"], S32["m"], STATE_TOL_MIN),
                                      ("v", res.state["v"], S64["v"], S32["v"], STATE_TOL_MIN)):
        m_, p_ = compare_pieces(label, got, r64, r32, case.pieces(), tol)
        msgs.append(m_)
        problems += p_
    if problems:
        Q, R = adamw_torch(case, rounded_betas(params, [0.9, 0.999]), torch.float64)
        problems.append(f32_constants_note({"p": worst_piece_err(res.p, Q, case.pieces()),
                                            "m": worst_piece_err(res.state["m"], R["m"], case.pieces()),
                                            "v": worst_piece_err(res.state["v"], R["v"], case.pieces())}))
    return finish(msgs, problems)


@check
def adamw_default(tmp):
    """Defaults (betas 0.9/0.999, eps 1e-6, weight_decay 1e-4) against torch.optim.AdamW."""
    # lr 0.05 on parameters of order 1: the default weight decay (lr wd = 5e-6 a step) is visible.
    return adamw_check(tmp, "adamw", Case(1, p_scale=1.0, lr=0.05), {})


@check
def adamw_params(tmp):
    """Every parameter given: betas, eps, weight_decay."""
    return adamw_check(tmp, "adamw_p", Case(2, lr=3e-3), {"betas": [0.8, 0.95], "eps": 1e-8, "weight_decay": 0.1})


# --- AdamW8bit ---

def adamw8bit_run(tmp, tag, case, params):
    w = Work(tmp, tag)
    res = run_optim(w, "run", case, "adamw8bit", params)
    _, nb = block_ids(case.shapes)
    expect_state(res, {"m_q": ("U8", [case.n]), "v_q": ("U8", [case.n]), "m_absmax": ("F32", [nb]),
                       "v_absmax": ("F32", [nb])}, ["t"])
    return res, adamw8bit_ref(case, params)


def adamw8bit_codes(res, ref, steps):
    """Final codes and absmax vs the reference: differences only where the reference saw a value within
    rounding of a midpoint, or in a block whose absmax that may have changed."""
    msgs, problems = [], []
    blk = ref["blk"]
    near, blocks = ref["amb_elem"] <= steps, ref["amb_block"] <= steps
    explained = near | blocks[blk]
    msgs.append(f"{int(near.sum())} elements within rounding of a midpoint at some step, "
                f"{int(blocks.sum())}/{ref['nblocks']} blocks' absmax affected by them")
    for k in ("m", "v"):
        got, want = res.state[k + "_q"], ref[k + "_q"]
        diff = got != want
        unexplained = diff & ~explained
        frac = float(diff.mean())
        msgs.append(f"{k} codes differ at {int(diff.sum())}/{diff.size} ({frac:.2g})")
        if unexplained.any():
            i = np.flatnonzero(unexplained)[:5]
            problems.append(f"{k} codes differ away from any midpoint at {int(unexplained.sum())} elements, e.g. "
                            f"index {i.tolist()}: trainer {got[i].tolist()} ref {want[i].tolist()}")
        if frac > Q_MISMATCH_MAX:
            problems.append(f"{k} codes differ at {frac:.3g} of the elements (limit {Q_MISMATCH_MAX})")
        ga, wa = res.state[k + "_absmax"].astype(np.float64), ref[k + "_absmax"].astype(np.float64)
        e = np.abs(ga - wa) / np.maximum(np.abs(wa), 1e-30)
        ok_blocks = ~blocks
        worst = float(np.max(e[ok_blocks])) if ok_blocks.any() else 0.0
        msgs.append(f"{k}_absmax rel {worst:.2g} over {int(ok_blocks.sum())} blocks")
        if not worst <= ABSMAX_TOL:
            b = int(np.argmax(np.where(ok_blocks, e, -1)))
            problems.append(f"{k}_absmax block {b}: trainer {ga[b]:.9g} ref {wa[b]:.9g} "
                            f"(rel {worst:.3g}, tol {ABSMAX_TOL})")
    return msgs, problems


def adamw8bit_trajectory(res, ref, case):
    # Step s uses the moments dequantized from step s-1's codes: leave an element out after a step where
    # its code was ambiguous, and a block out after its absmax became uncertain.
    s = np.arange(1, case.steps + 1)[:, None]
    keep = (s <= ref["amb_elem"][None]) & (s <= ref["amb_block"][ref["blk"]][None])
    return compare_pieces("p", res.p, ref["P64"], ref["P32"], case.pieces(), P_TOL_MIN, keep)


@check
def adamw8bit_default(tmp):
    """Defaults: the trajectory within float32 tolerance of the block-wise 8-bit reference; the final
    codes equal the reference's except within rounding of a midpoint; absmax to float32 rounding."""
    case = Case(21, p_scale=1.0, lr=0.05)  # the default weight decay visible, as in adamw_default
    res, ref = adamw8bit_run(tmp, "a8", case, {})
    m1, p1 = adamw8bit_trajectory(res, ref, case)
    m2, p2 = adamw8bit_codes(res, ref, case.steps)
    return finish([m1] + m2 + [f"t {res.scalars.get('t')}"], p1 + p2 + expect_count(res, "t", case.steps))


@check
def adamw8bit_params(tmp):
    """Every parameter given (betas, eps, weight_decay), a 10-step cosine lr; tensors of exactly 2 and 1
    blocks."""
    case = Case(22, shapes=[(16, 32), (100,), (17, 45), (300,), (3, 5), (256,)], steps=10, lr=2e-3)
    res, ref = adamw8bit_run(tmp, "a8p", case, {"betas": [0.85, 0.98], "eps": 1e-8, "weight_decay": 0.05})
    m1, p1 = adamw8bit_trajectory(res, ref, case)
    m2, p2 = adamw8bit_codes(res, ref, case.steps)
    return finish([m1] + m2, p1 + p2 + expect_count(res, "t", case.steps))


@check
def adamw8bit_first_step_dequantized_and_state_bytes(tmp):
    """One step: the dequantized moments (map[code] * absmax) are within the quantization error (half
    the map gap at the code, times absmax) of the fp32 moments (1-b1) g and (1-b2) g^2 (with 1 - beta
    formed in float32, as bitsandbytes does: 1.3e-5 below 0.001 for beta2 0.999); state_bytes is 2 bytes
    per parameter plus 8 per block."""
    case = Case(23).prefix(1)
    res, ref = adamw8bit_run(tmp, "a8q", case, {})
    blk, nb = ref["blk"], ref["nblocks"]
    msgs, problems = [], []
    for k, qmap, want in (("m", QMAP_S, ref["m1"].astype(np.float64)), ("v", QMAP_U, ref["v1"].astype(np.float64))):
        codes, absmax = res.state[k + "_q"], res.state[k + "_absmax"].astype(np.float64)
        deq = qmap[codes].astype(np.float64) * absmax[blk]
        bound = half_gap(codes, qmap) * absmax[blk] + 4 * F32_EPS * (np.abs(deq) + np.abs(want))
        ratio = np.abs(deq - want) / np.maximum(bound, 1e-300)
        rel_abs = np.abs(deq - want) / absmax[blk]
        msgs.append(f"{k} dequantized error <= {float(ratio.max()):.3g} x half gap "
                    f"(mean |err|/absmax {float(rel_abs.mean()):.2g})")
        if not ratio.max() <= 1.0:
            i = int(np.argmax(ratio))
            problems.append(f"{k}[{i}]: dequantized {deq[i]:.9g} vs fp32 moment {want[i]:.9g}: {ratio[i]:.3g} x the "
                            f"quantization error bound (code {int(codes[i])}, absmax {absmax[blk[i]]:.6g})")
    m2, p2 = adamw8bit_codes(res, ref, 1)
    m1, p1 = adamw8bit_trajectory(res, ref, case)
    want_bytes = 2 * case.n + 8 * nb
    msgs.append(f"state_bytes {res.state_bytes} = 2 x {case.n} + 8 x {nb} blocks "
                f"({res.state_bytes / case.n:.3f} bytes/param)")
    if res.state_bytes != want_bytes:
        problems.append(f"state_bytes {res.state_bytes}, expected {want_bytes}")
    return finish(msgs + m2 + [m1], problems + p2 + p1 + expect_count(res, "t", 1))


# --- Lion ---

def lion_check(tmp, tag, case, params):
    w = Work(tmp, tag)
    res = run_optim(w, "run", case, "lion", params)
    expect_state(res, {"m": ("F32", [case.n])}, [])
    P64, S64, margin = lion_ref(case, params, torch.float64)
    P32, S32, _ = lion_ref(case, params, torch.float32)
    # An element whose c was within rounding of 0 may step the other way: leave it out from that step on.
    close = margin < LION_SIGN_MARGIN
    first = np.where(close.any(0), close.argmax(0), case.steps)
    keep = np.arange(case.steps)[:, None] < first[None]
    msgs, problems = [], []
    m_, p_ = compare_pieces("p", res.p, P64, P32, case.pieces(), P_TOL_MIN, keep)
    msgs.append(m_ + f" (smallest |c| margin {float(margin.min()):.2g}, {int(close.sum())} sign(c) within rounding of 0)")
    problems += p_
    m_, p_ = compare_pieces("m", res.state["m"], S64["m"], S32["m"], case.pieces(), STATE_TOL_MIN)
    msgs.append(m_)
    problems += p_
    if problems:
        Q, R, _ = lion_ref(case, rounded_betas(params, [0.9, 0.99]), torch.float64)
        problems.append(f32_constants_note({"p": worst_piece_err(np.where(keep, res.p, Q), Q, case.pieces()),
                                            "m": worst_piece_err(res.state["m"], R["m"], case.pieces())}))
    return finish(msgs, problems)


@check
def lion_default(tmp):
    """Defaults: betas 0.9/0.99 and no weight decay when params has none."""
    # lr 0.01 on parameters of order 1: a weight decay of 1e-4 would move p by 8e-6 of itself.
    return lion_check(tmp, "lion", Case(31, p_scale=1.0, lr=0.01), {})


@check
def lion_betas_weight_decay(tmp):
    """betas and weight_decay given (decay p *= 1 - lr wd before the sign step)."""
    return lion_check(tmp, "lion_wd", Case(32, p_scale=0.05, lr=3e-4), {"betas": [0.95, 0.98], "weight_decay": 0.5})


# --- Adafactor ---

# A gradient spike at step 3 makes the update's RMS exceed clip_threshold, so clipping is exercised;
# gradients of 1e-15 in one tensor make g^2 comparable to eps1 (1e-30).
ADAFACTOR_STEP_SCALE = [1, 1, 4, 1, 1, 0.3, 1, 1]
ADAFACTOR_GRAD_SCALE = [1.0, 1e-3, 0.1, 1e-15, 3.0, 0.01]


def adafactor_check(tmp, tag, case, params):
    w = Work(tmp, tag)
    res = run_optim(w, "run", case, "adafactor", params)
    pieces, sizes = adafactor_state_pieces(case)
    want = {"row": ("F32", [sizes["row"]]), "col": ("F32", [sizes["col"]]), "v": ("F32", [sizes["v"]])}
    if params.get("beta1") is not None:
        want["m"] = ("F32", [case.n])
    expect_state(res, want, ["step"], optional=("row", "col", "v"))
    P64, S64, lrs = adafactor_ref(case, params, torch.float64)
    P32, S32, _ = adafactor_ref(case, params, torch.float32)
    msgs, problems = [], expect_count(res, "step", case.steps)
    m_, p_ = compare_pieces("p", res.p, P64, P32, case.pieces(), P_TOL_MIN)
    msgs.append(m_)
    problems += p_
    for k in ("row", "col", "v", "m"):
        if k not in S64 or S64[k].size == 0:
            continue
        m_, p_ = compare_pieces(k, res.state[k], S64[k], S32[k], case.pieces() if k == "m" else pieces[k], STATE_TOL_MIN)
        msgs.append(m_)
        problems += p_
    flat = [x for row in lrs for x in row]
    msgs.append(f"ref lr {min(flat):.3g}..{max(flat):.3g}")
    return finish(msgs, problems), res, case


@check
def adafactor_default(tmp):
    """The toolkit's construction (relative_step, scale_parameter, warmup_init false; beta1 none;
    eps 1e-30/1e-3, clip 1, decay_rate -0.8, no weight decay): factored 2-D, unfactored 1-D, clipping."""
    # lr 0.02 on parameters of order 1: a weight decay of 1e-4 would be visible.
    case = Case(41, p_scale=1.0, lr=2e-2, grad_scale=ADAFACTOR_GRAD_SCALE, step_scale=ADAFACTOR_STEP_SCALE)
    return adafactor_check(tmp, "af", case, {})[0]


@check
def adafactor_relative_step_scale_parameter(tmp):
    """relative_step and scale_parameter: lr = min(1e-2, 1/sqrt(step)) * max(eps2, RMS(p)), the lr given
    (absurd here) ignored; one segment's RMS(p) below eps2 so the eps2 floor is taken."""
    case = Case(42, p_scale=[0.5, 2.0, 1e-4, 0.1, 1.0, 3.0], grad_scale=ADAFACTOR_GRAD_SCALE,
                step_scale=ADAFACTOR_STEP_SCALE, lr_values=[0.5] * 8)
    return adafactor_check(tmp, "af_rel", case, {"relative_step": True, "scale_parameter": True})[0]


@check
def adafactor_beta1_weight_decay(tmp):
    """beta1 0.9 (the first moment of the clipped, lr-scaled update) and weight_decay 0.01."""
    case = Case(43, p_scale=0.05, lr=1e-2, grad_scale=ADAFACTOR_GRAD_SCALE, step_scale=ADAFACTOR_STEP_SCALE)
    return adafactor_check(tmp, "af_b1", case, {"beta1": 0.9, "weight_decay": 0.01})[0]


@check
def adafactor_warmup_init_other_constants(tmp):
    """warmup_init (min_step 1e-6 * step) with relative_step, scale_parameter off; clip_threshold 0.5,
    decay_rate -0.5, eps [1e-20, 1e-2] given."""
    case = Case(44, p_scale=0.05, step_scale=ADAFACTOR_STEP_SCALE, lr_values=[7.0] * 8)
    params = {"relative_step": True, "warmup_init": True, "clip_threshold": 0.5, "decay_rate": -0.5,
              "eps": [1e-20, 1e-2]}
    return adafactor_check(tmp, "af_warm", case, params)[0]


@check
def adafactor_state_bytes_large_matrix(tmp):
    """A 64x128 matrix and a 128 vector: state is row + col + v = 4 x (64 + 128 + 128) bytes, far below
    AdamW's 8 bytes per parameter."""
    case = Case(45, shapes=[(64, 128), (128,)], grad_scale=[1.0, 0.1], steps=6, lr=1e-3)
    msg, res, _ = adafactor_check(tmp, "af_big", case, {})
    want = 4 * (64 + 128 + 128)
    line = f"state_bytes {res.state_bytes} ({res.state_bytes / case.n:.3f} bytes/param vs AdamW's 8)"
    if res.state_bytes != want:
        raise CheckFailed(f"{line}, expected {want}")
    return line + "; " + msg


# --- Prodigy ---

def prodigy_check(tmp, tag, case, params):
    w = Work(tmp, tag)
    res = run_optim(w, "run", case, "prodigy", params)
    n = case.n
    expect_state(res, {k: ("F32", [n]) for k in ("m", "v", "s", "p0")}, ["d", "d_max", "d_numerator", "k"])
    P64, S64, C64, D64 = prodigy_ref(case, params, torch.float64)
    P32, S32, C32, D32 = prodigy_ref(case, params, torch.float32)
    msgs, problems = [], expect_count(res, "k", case.steps)
    # d after each step: the same case cut to 1, 2, ... steps.
    d_got = []
    for k in range(1, case.steps):
        r = run_optim(w, f"prefix{k}", case.prefix(k), "prodigy", params)
        if "d" not in r.scalars:
            raise CheckFailed(f"{k}-step run: metadata state.d missing")
        d_got.append(float(r.scalars["d"]))
    d_got.append(float(res.scalars["d"]))
    d_err = [abs(a - b) / b for a, b in zip(d_got, D64)]
    d_floor = max(abs(a - b) / b for a, b in zip(D32, D64))
    d_tol = max(D_TOL_MIN, FLOOR_FACTOR * d_floor)
    msgs.append(f"d per step {' '.join(f'{x:.3g}' for x in d_got)}: rel err max {max(d_err):.2g} "
                f"(torch f32 vs f64 {d_floor:.2g}, tol {d_tol:.2g})")
    for i, (a, b, c) in enumerate(zip(d_got, D64, D32)):
        if not (abs(a - b) / b < d_tol and abs(a - c) / b < d_tol):
            problems.append(f"d after step {i + 1}: trainer {a:.9g}, ref f64 {b:.9g} f32 {c:.9g}")
    m_, p_ = compare_pieces("p", res.p, P64, P32, case.pieces(), P_TOL_MIN)
    msgs.append(m_)
    problems += p_
    for k in ("m", "v", "s"):
        m_, p_ = compare_pieces(k, res.state[k], S64[k], S32[k], case.pieces(), STATE_TOL_MIN)
        msgs.append(m_)
        problems += p_
    if not np.array_equal(res.state["p0"].view(np.uint32), case.p0.view(np.uint32)):
        problems.append(f"state.p0 differs from the initial parameters at "
                        f"{int(np.sum(res.state['p0'] != case.p0))} elements")
    for k in ("d_max", "d_numerator"):
        m_, p_ = compare_scalar(k, res.scalars[k], C64[k], C32[k], D_TOL_MIN)
        msgs.append(m_)
        problems += p_
    if problems:
        Q, R, C, D = prodigy_ref(case, rounded_betas(params, [0.9, 0.999], beta3=True), torch.float64)
        errs = {"d": max(abs(a - b) / b for a, b in zip(d_got, D)), "p": worst_piece_err(res.p, Q, case.pieces())}
        errs.update({k: worst_piece_err(res.state[k], R[k], case.pieces()) for k in ("m", "v", "s")})
        problems.append(f32_constants_note(errs))
    return finish(msgs, problems)


# d grows from d0 only as p moves along the gradients' persistent direction; p0 of 1e-3 keeps p0 - p
# (which cancels in float32) accurate to ~1e-4 of itself after the first steps.
PRODIGY_STEPS = 10


@check
def prodigy_default(tmp):
    """Defaults (betas 0.9/0.999, beta3 sqrt(beta2), eps 1e-6, d0 1e-6, d_coef 1, growth unbounded,
    decoupled, no bias correction), lr 1."""
    case = Case(51, steps=PRODIGY_STEPS, p_scale=1e-3, lr_values=[1.0] * PRODIGY_STEPS)
    return prodigy_check(tmp, "pr", case, {})


@check
def prodigy_weight_decay_bias_correction(tmp):
    """weight_decay 0.01 (decoupled, p += -wd dlr p) and use_bias_correction (dlr scaled by
    sqrt(1 - b2^k) / (1 - b1^k))."""
    case = Case(52, steps=PRODIGY_STEPS, p_scale=1e-3, lr_values=[1.0] * PRODIGY_STEPS)
    return prodigy_check(tmp, "pr_wd", case, {"weight_decay": 0.01, "use_bias_correction": True})


@check
def prodigy_growth_rate_d_coef(tmp):
    """growth_rate 1.02 and d_coef 2, with an lr multiplier that changes each step."""
    case = Case(53, steps=PRODIGY_STEPS, p_scale=1e-3,
                lr_values=[1.0 - 0.05 * t for t in range(PRODIGY_STEPS)])
    return prodigy_check(tmp, "pr_gr", case, {"growth_rate": 1.02, "d_coef": 2.0})


@check
def prodigy_safeguard_beta3_d0(tmp):
    """safeguard_warmup (s accumulates d g, not dlr g), beta3 0.99, d0 1e-5, betas, eps and weight_decay
    given."""
    case = Case(54, steps=PRODIGY_STEPS, p_scale=1e-3, lr_values=[1.0] * PRODIGY_STEPS)
    params = {"weight_decay": 0.1, "safeguard_warmup": True, "beta3": 0.99, "d0": 1e-5,
              "betas": [0.85, 0.99], "eps": 1e-8}
    return prodigy_check(tmp, "pr_s", case, params)


# --- Resume ---

def resume_check(tmp, tag, case, optimizer, params):
    w = Work(tmp, tag)
    a = run_optim(w, "straight", case, optimizer, params)
    k = case.steps // 2
    b = run_optim(w, "resumed", case, optimizer, params, resume_at=k)
    problems = []
    diff = a.p.view(np.uint32) != b.p.view(np.uint32)
    if diff.any():
        s = int(np.argmax(diff.any(1)))
        problems.append(f"p differs at {int(diff.sum())} values, first at step {s + 1} "
                        f"(max |diff| {float(np.max(np.abs(a.p.astype(np.float64) - b.p))):.3g})")
    if sorted(a.state) != sorted(b.state):
        problems.append(f"state tensors {sorted(a.state)} vs resumed {sorted(b.state)}")
    for name in sorted(set(a.state) & set(b.state)):
        x, y = a.state[name], b.state[name]
        if x.shape != y.shape or x.tobytes() != y.tobytes():
            problems.append(f"state.{name} differs ({int(np.sum(x != y)) if x.shape == y.shape else 'shape'} values)")
    if a.scalars != b.scalars:
        problems.append(f"state scalars {a.scalars} vs resumed {b.scalars}")
    msg = (f"resume_at {k} of {case.steps}: p {list(a.p.shape)}, state {sorted(a.state)} and scalars "
           f"{sorted(a.scalars)}" + (" bit-identical" if not problems else " differ"))
    if not problems and np.array_equal(a.p[k - 1], a.p[k]):
        problems.append("the step after the resume did not change p: the case does not test the resume")
    return finish([msg], problems)


@check
def resume_adamw(tmp):
    return resume_check(tmp, "r_adamw", Case(61, steps=7), "adamw", {})


@check
def resume_adamw8bit(tmp):
    return resume_check(tmp, "r_a8", Case(62, steps=7), "adamw8bit", {"weight_decay": 0.01})


@check
def resume_lion(tmp):
    return resume_check(tmp, "r_lion", Case(63, steps=7), "lion", {"weight_decay": 0.1})


@check
def resume_adafactor(tmp):
    """beta1 and relative_step + scale_parameter: the first moment and the step counter must survive."""
    return resume_check(tmp, "r_af", Case(64, steps=7, step_scale=ADAFACTOR_STEP_SCALE[:7]), "adafactor",
                        {"beta1": 0.9, "weight_decay": 0.01, "relative_step": True, "scale_parameter": True})


@check
def resume_prodigy(tmp):
    """Bias correction (depends on k) and a growth rate (depends on d, d_max): all must survive."""
    case = Case(65, steps=7, p_scale=1e-3, lr_values=[1.0] * 7)
    return resume_check(tmp, "r_pr", case, "prodigy", {"use_bias_correction": True, "growth_rate": 1.5,
                                                         "weight_decay": 0.01})


# --- Bad input ---

@check
def unknown_optimizer_rejected(tmp):
    """An unknown type exits non-zero with a message naming it."""
    if not os.path.isfile(TRAINER):
        raise CheckFailed(f"trainer binary not found: {TRAINER} (point GRAFT_TRAINER at it)")
    w = Work(tmp, "bad")
    case = Case(71, steps=2)
    cfg = {"optimizer": "adamw9bit", "params": {}, "lr": case.lr, "segments": case.segments_json()}
    ip, op = w.path("in.safetensors"), w.path("out.safetensors")
    st_write(ip, {"p0": case.p0, "grads": case.grads}, {"config": json.dumps(cfg)})
    cmd = [TRAINER, "optim-check", ip, op] + DEVICE_ARGS
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`{' '.join(cmd)}` did not finish within 60 s")
    text = (r.stderr + r.stdout).strip()
    if r.returncode == 0:
        raise CheckFailed(f"optimizer adamw9bit accepted (exit 0): {text[-300:]!r}")
    if "adamw9bit" not in text:
        raise CheckFailed(f"exit {r.returncode} but the message does not name adamw9bit: {text[-300:]!r}")
    return f"exit {r.returncode}: {text.splitlines()[-1][:200] if text else ''}"


def main():
    return run_checks(CHECKS, f"torch-reference (optimizers): torch {torch.__version__}, trainer {TRAINER}",
                      "graft-torchref-optim-")


if __name__ == "__main__":
    sys.exit(main())
