#!/usr/bin/env python3
"""Independent check of the trainer's quantized frozen weights (model.quantize): PyTorch references
written from each format's public definition, which the trainer's codes, scales, the weight its
layer computes with, and a LoRA's forward and gradients through that layer must match.

  fp8   optimum-quanto's qfloat8 weights: one float32 scale per output row, s = max|row| / 448, codes
        e4m3fn(row / s) rounded to nearest, ties to even, saturating at 448. The e4m3fn values are
        decoded here from their bit fields (torch 1.13 has no float8 dtype).
  int8  quanto's qint8 weights: s = max|row| / 127, codes round(row / s) (half to even) in [-127, 127].
  nf4   QLoRA's 4-bit NormalFloat as bitsandbytes stores it: the flattened weight in blocks of 64, each
        with its float32 absmax; each value w * (1 / absmax) goes to the nearest of 16 levels (ties to
        the lower one), two indices per byte, the first in the high nibble. The levels are built here as
        bitsandbytes' create_normal_map(0.9677083) builds them (quantiles of N(0, 1) through
        torch.special.ndtri) and must equal its published table.

A layer [out, in] with a bias and a LoRA (A [r, in], B [out, r], scale) runs forward and backward in
the trainer (graft-trainer quant-check); the reference computes y = x W^T + b + scale (x A^T) B^T with
W its own dequantized weight, and dx, dA, dB by autograd in float64.

Run: /usr/bin/python3 trainer-cuda/tests/test_quant_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_TRAINER = trainer binary (default <repo>/trainer-cuda/build/graft-trainer);
     GRAFT_QUANT_DEVICE = passed as quant-check's --device when set.
Prints ok/FAIL per check with the errors measured; exits non-zero on any failure.

Trainer contract exercised:
  graft-trainer quant-check <in.safetensors> <out.safetensors>
    in:  w [out, in], b [out], x [N, in], A [r, in], B [out, r], dy [N, out] (F32);
         metadata format (fp8 | int8 | nf4), lora_scale
    out: codes (F8_E4M3 [out, in] | I8 [out, in] | U8 [ceil(out*in / 2)]), scale F32 [out] (fp8, int8)
         or absmax F32 [ceil(out*in / 64)] (nf4), deq_t F32 [in, out] (the identity through the bare
         layer: W^T as it computes), y F32 [N, out], dx, dA, dB
"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_flux_torch import CheckFailed, Work, rel_err, run_checks, run_trainer, st_read, st_write  # noqa: E402

torch.set_num_threads(1)
DEVICE = os.environ.get("GRAFT_QUANT_DEVICE")

# bitsandbytes' NF4 table as published (functional.py, get_4bit_type("nf4")).
NF4_PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def nf4_levels():
    """create_normal_map(offset=0.9677083, use_extra_value=True): 8 positive and 7 negative quantiles of
    N(0, 1) and a zero, divided by the largest."""
    offset = 0.9677083
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (v / v.abs().max()).to(torch.float32)


def e4m3_values():
    """The value of each e4m3fn code 0..255 (NaN for S.1111.111): bias 7, subnormals at exponent 0."""
    vals = []
    for c in range(256):
        s, e, m = (c >> 7) & 1, (c >> 3) & 15, c & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = m / 8.0 * 2.0 ** -6
        else:
            v = (1 + m / 8.0) * 2.0 ** (e - 7)
        vals.append(-v if s else v)
    return torch.tensor(vals, dtype=torch.float64)


E4M3 = e4m3_values()


def e4m3_encode(x):
    """Nearest e4m3fn code of each float32 value (ties to the even code), saturating at +-448."""
    x = x.to(torch.float64).clamp(-448.0, 448.0)
    finite = torch.arange(256)[~torch.isnan(E4M3)]
    vals = E4M3[finite]
    d = (x.reshape(-1, 1) - vals.reshape(1, -1)).abs()
    best = d.min(dim=1, keepdim=True).values
    cand = d == best
    # among equally near codes (a tie, or +0 and -0 for zero) take the even one, and the zero of x's sign
    same_sign = (finite.reshape(1, -1) >= 128) == torch.signbit(x.reshape(-1, 1))
    score = cand.to(torch.int64) * 4 + (finite.reshape(1, -1) % 2 == 0).to(torch.int64) * 2 + same_sign.to(torch.int64)
    return finite[score.argmax(dim=1)].reshape(x.shape).to(torch.uint8)


def ref_fp8(w):
    s = (w.abs().amax(dim=1) / 448.0).to(torch.float32)
    s = torch.where(s > 0, s, torch.ones_like(s))
    codes = e4m3_encode((w / s[:, None]).to(torch.float32))
    deq = E4M3[codes.long()].to(torch.float32) * s[:, None]
    return codes, s, deq


def ref_int8(w):
    s = (w.abs().amax(dim=1) / 127.0).to(torch.float32)
    s = torch.where(s > 0, s, torch.ones_like(s))
    codes = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, s, codes.to(torch.float32) * s[:, None]


def ref_nf4(w, levels):
    flat = w.reshape(-1)
    n = flat.numel()
    pad = (-n) % 64
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 64)
    absmax = blocks.abs().amax(dim=1)
    inv = torch.where(absmax > 0, 1.0 / absmax, torch.zeros_like(absmax))
    normed = (blocks * inv[:, None]).reshape(-1)[:n]
    mids = ((levels[:-1] + levels[1:]) * 0.5).to(torch.float32)
    idx = torch.bucketize(normed, mids)  # the count of midpoints below x: ties go to the lower level
    nib = torch.cat([idx, idx.new_zeros(n % 2)]).reshape(-1, 2)
    codes = (nib[:, 0] * 16 + nib[:, 1]).to(torch.uint8)
    deq = levels[idx] * absmax.repeat_interleave(64)[:n]
    return codes, absmax, deq.reshape(w.shape)


def run_layer(work, fmt, w, b, x, A, B, dy, scale, tag):
    ip, op = work.path(tag + "_in.safetensors"), work.path(tag + "_out.safetensors")
    st_write(ip, {"w": w.numpy(), "b": b.numpy(), "x": x.numpy(), "A": A.numpy(), "B": B.numpy(), "dy": dy.numpy()},
             {"format": fmt, "lora_scale": repr(scale)})
    run_trainer("quant-check", ip, op, *(["--device", DEVICE] if DEVICE else []))
    return read_out(op)


def read_out(path):
    """st_read, with the codes' stored dtype and their raw bytes (st_read gives fp8 codes as uint8)."""
    out, _ = st_read(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    if "codes" not in header:
        raise CheckFailed(f"{path}: no `codes` tensor (has {sorted(header)})")
    out["codes_dtype"] = header["codes"]["dtype"]
    out["codes_raw"] = np.ascontiguousarray(out["codes"]).view(np.uint8).reshape(-1)
    return out


def reference_layer(deq, b, x, A, B, dy, scale):
    W = deq.to(torch.float64)
    xs = x.to(torch.float64).requires_grad_(True)
    As = A.to(torch.float64).requires_grad_(True)
    Bs = B.to(torch.float64).requires_grad_(True)
    y = xs @ W.T + b.to(torch.float64) + scale * (xs @ As.T) @ Bs.T
    y.backward(dy.to(torch.float64))
    return y.detach(), xs.grad, As.grad, Bs.grad


def make_case(out, inp, n, rank, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[0, :3] = torch.tensor([0.3, -0.2, 0.0])  # an outlier row, and an exact zero
    # Ties: int8's scale is 2^-7 on row 1, so row / s holds x.5 exactly (to even: 0, 2, 2, -0, -2); fp8's is 1
    # on row 3, which holds values halfway between e4m3 neighbours (1.0625: 1 or 1.125; 17: 16 or 18).
    if out < 4:
        return (w, torch.randn(out, generator=g) * 0.1, torch.randn(n, inp, generator=g),
                torch.randn(rank, inp, generator=g) * 0.1, torch.randn(out, rank, generator=g) * 0.1, torch.randn(n, out, generator=g))
    w[1, :6] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5]) * 2.0 ** -7
    w[2] = 0.0  # an all-zero row: scale 1, codes 0
    w[3, :5] = torch.tensor([448.0, 1.0625, 17.0, -1.0625, 0.0])
    return (w, torch.randn(out, generator=g) * 0.1, torch.randn(n, inp, generator=g), torch.randn(rank, inp, generator=g) * 0.1,
            torch.randn(out, rank, generator=g) * 0.1, torch.randn(n, out, generator=g))


CASES = [(37, 96, 5, 4, 1), (5, 13, 3, 2, 2)]  # [out, in], N, rank, seed: the second has an odd count and blocks across rows
# CPU: fp32 products; CUDA: bf16 operands.
TOL = 1e-5 if not DEVICE or DEVICE == "cpu" else 2e-2


def check_format(fmt, tmp):
    work = Work(tmp, fmt)
    levels = nf4_levels()
    lines = []
    for (o, i, n, r, seed) in CASES:
        w, b, x, A, B, dy = make_case(o, i, n, r, seed)
        scale = 0.75
        got = run_layer(work, fmt, w, b, x, A, B, dy, scale, f"{o}x{i}")
        if fmt == "fp8":
            codes, s, deq = ref_fp8(w)
            want_dtype, ref_raw, scales, got_scales = "F8_E4M3", codes.numpy().reshape(-1), s, got.get("scale")
        elif fmt == "int8":
            codes, s, deq = ref_int8(w)
            want_dtype, ref_raw, scales, got_scales = "I8", codes.numpy().view(np.uint8).reshape(-1), s, got.get("scale")
        else:
            codes, s, deq = ref_nf4(w, levels)
            want_dtype, ref_raw, scales, got_scales = "U8", codes.numpy().reshape(-1), s, got.get("absmax")
        if got["codes_dtype"] != want_dtype:
            raise CheckFailed(f"{o}x{i}: codes stored as {got['codes_dtype']}, expected {want_dtype}")
        if got_scales is None:
            raise CheckFailed(f"{o}x{i}: no scales in the output (has {sorted(got)})")
        if got["codes_raw"].shape != ref_raw.shape:
            raise CheckFailed(f"{o}x{i}: {got['codes_raw'].size} code bytes, expected {ref_raw.size}")
        diff = int(np.sum(got["codes_raw"] != ref_raw))
        if diff:
            k = int(np.argmax(got["codes_raw"] != ref_raw))
            raise CheckFailed(f"{o}x{i}: {diff} of {ref_raw.size} code bytes differ (first at {k}: {got['codes_raw'][k]} vs {ref_raw[k]})")
        if not np.array_equal(np.asarray(got_scales, np.float32), scales.numpy()):
            raise CheckFailed(f"{o}x{i}: scales differ by up to {np.max(np.abs(got_scales - scales.numpy())):.3e}")
        y, dx, dA, dB = reference_layer(deq, b, x, A, B, dy, scale)
        pairs = {"deq": (got["deq_t"].T, deq), "y": (got["y"], y), "dx": (got["dx"], dx), "dA": (got["dA"], dA),
                 "dB": (got["dB"], dB)}
        errs = {k: rel_err(g, r.numpy())[1] for k, (g, r) in pairs.items()}
        bad = {k: v for k, v in errs.items() if not v <= TOL}
        if bad:
            raise CheckFailed(f"{o}x{i}: " + ", ".join(f"{k} rel {v:.2e}" for k, v in bad.items()) + f" (tol {TOL:.0e})")
        lines.append(f"{o}x{i}: codes and scales equal, " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    return "; ".join(lines)


def check_nf4_levels(tmp):
    """The levels built from N(0, 1)'s quantiles are bitsandbytes' table, and the trainer decodes a block
    holding exactly those levels (absmax 1) to them."""
    levels = nf4_levels()
    e = float((levels.to(torch.float64) - torch.tensor(NF4_PUBLISHED, dtype=torch.float64)).abs().max())
    if e > 2.5e-7:  # two float32 steps: scipy's and torch's quantile functions round apart
        raise CheckFailed(f"the built levels differ from the published table by {e:.2e}")
    work = Work(tmp, "levels")
    w = torch.tensor(NF4_PUBLISHED * 4, dtype=torch.float32).reshape(1, 64)
    _, b, x, A, B, dy = make_case(1, 64, 2, 1, 3)
    got = run_layer(work, "nf4", w, b, x, A, B, dy, 1.0, "levels")
    want = bytes((2 * k) * 16 + 2 * k + 1 for k in range(8)) * 4
    if bytes(got["codes_raw"]) != want:
        raise CheckFailed(f"codes {bytes(got['codes_raw']).hex()}, expected {want.hex()}")
    decoded = got["deq_t"].T.reshape(-1)
    err = float(np.max(np.abs(decoded - np.asarray(NF4_PUBLISHED * 4, np.float32))))
    if err > (0 if not DEVICE or DEVICE == "cpu" else 4e-3):
        raise CheckFailed(f"the trainer decodes the levels with error {err:.2e}")
    return f"levels equal the published table within {e:.1e}; codes 0..15 in order, decoded with error {err:.1e}"


def check_fp8(tmp):
    return check_format("fp8", tmp)


def check_int8(tmp):
    return check_format("int8", tmp)


def check_nf4(tmp):
    return check_format("nf4", tmp)


def check_unknown_format(tmp):
    work = Work(tmp, "bad")
    w, b, x, A, B, dy = make_case(4, 8, 2, 1, 4)
    try:
        run_layer(work, "int4", w, b, x, A, B, dy, 1.0, "bad")
    except CheckFailed as e:
        if "one of fp8, int8, nf4" not in str(e):
            raise CheckFailed(f"refused, but the message does not list the formats: {e}")
        return "an unknown format is refused with the formats listed"
    raise CheckFailed("quant-check accepted format int4")


CHECKS = [check_nf4_levels, check_fp8, check_int8, check_nf4, check_unknown_format]


def main():
    from test_flux_torch import TRAINER
    return run_checks(CHECKS, f"torch-reference (quantized weights): torch {torch.__version__}, trainer {TRAINER}",
                      "graft-quantref-")


if __name__ == "__main__":
    sys.exit(main())
