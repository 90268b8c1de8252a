#!/usr/bin/env python3
"""Independent check of the C++ FLUX autoencoder (models/flux_vae.cpp): a PyTorch re-implementation of
BFL's flux/modules/autoencoder.py (Encoder, Decoder, ResnetBlock, AttnBlock, Downsample, Upsample,
DiagonalGaussian, scale/shift factors) which the trainer's outputs and gradients must match.

The checkpoint is written here from the torch modules' own state_dict(), so the tensor names the
C++ loader reads are the ones BFL's module tree produces, not a list shared with the C++ code.

Run: /usr/bin/python3 trainer-cuda/tests/test_vae_torch.py   (Debian python3-torch + numpy)
Env: GRAFT_VAE_CHECK = driver binary (default <repo>/trainer-cuda/build/graft-vae-check).
Prints ok/FAIL per check with the errors measured, then `vae-torch: N passed, N failed`; exits
non-zero on any failure. A missing binary is a FAIL, never a skip.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn as nn

torch.set_num_threads(1)  # the test machine is shared; the model here is tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.abspath(os.environ.get("GRAFT_VAE_CHECK") or
                         os.path.join(ROOT, "trainer-cuda", "build", "graft-vae-check"))

# Errors are max|cpp - ref| / max|ref| over a tensor, ref = torch float64 on the same float32
# weights and inputs. Each tolerance is FLOOR_FACTOR times the error torch's own float32 run makes
# on the same case (the "floor"), never below the minimums here.
FLOOR_FACTOR = 10
FWD_TOL_MIN = 1e-5
GRAD_TOL_MIN = 1e-4

# A tiny FLUX-layout autoencoder: three levels (two downsamples, two upsamples, nin_shortcuts where
# the width changes in both directions, so a wrong decoder.up indexing cannot load), 8 GroupNorm groups.
CONFIG = dict(resolution=16, in_channels=3, ch=16, out_ch=3, ch_mult=[1, 2, 3], num_res_blocks=2, z_channels=4)
GROUPS = 8
SCALE_FACTOR, SHIFT_FACTOR = 0.45, -0.2  # not FLUX's, so reading them from the metadata is tested
B, H, W = 2, 16, 16
KL_WEIGHT = 0.1

# ---------------------------------------------------------------------------------------------
# safetensors: u64 LE header length, JSON header, data buffer (offsets relative to the buffer).


def st_read(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    data = memoryview(buf)[8 + n:]
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name}: dtype {info['dtype']} (this test writes and reads F32)")
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(bytes(data[b:e]), "<f4").reshape(info["shape"]).copy()
    return out, meta


def st_write(path, tensors, metadata=None):
    header, chunks, off = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(arr)), "data_offsets": [off, off + len(raw)]}
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
# BFL flux/modules/autoencoder.py (GroupNorm's group count a parameter: tiny widths cannot use 32).


def swish(x):
    return x * torch.sigmoid(x)


def Normalize(c):
    return nn.GroupNorm(num_groups=GROUPS, num_channels=c, eps=1e-6, affine=True)


class AttnBlock(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def attention(self, h_):
        h_ = self.norm(h_)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        # "b c h w -> b 1 (h w) c", then scaled_dot_product_attention (torch 1.13 lacks it: spelled out)
        q = q.reshape(b, 1, c, h * w).transpose(2, 3)
        k = k.reshape(b, 1, c, h * w).transpose(2, 3)
        v = v.reshape(b, 1, c, h * w).transpose(2, 3)
        att = torch.softmax(q @ k.transpose(-2, -1) / (c ** 0.5), dim=-1)
        h_ = att @ v
        return h_.transpose(2, 3).reshape(b, c, h, w)

    def forward(self, x):
        return x + self.proj_out(self.attention(x))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels = in_channels
        out_channels = in_channels if out_channels is None else out_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if self.in_channels != self.out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        h = x
        h = self.conv1(swish(self.norm1(h)))
        h = self.conv2(swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        x = nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0)
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class Encoder(nn.Module):
    def __init__(self, resolution, in_channels, ch, ch_mult, num_res_blocks, z_channels):
        super().__init__()
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, self.ch, kernel_size=3, stride=1, padding=1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = self.ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out))
                block_in = block_out
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        hs = [self.conv_in(x)]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                hs.append(self.down[i_level].block[i_block](hs[-1]))
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))
        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, out_ch, ch_mult, num_res_blocks, in_channels, resolution, z_channels):
        super().__init__()
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        block_in = ch * ch_mult[self.num_resolutions - 1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(self.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out))
                block_in = block_out
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
            self.up.insert(0, up)  # prepend to get consistent order
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.encoder = Encoder(p["resolution"], p["in_channels"], p["ch"], p["ch_mult"], p["num_res_blocks"],
                               p["z_channels"])
        self.decoder = Decoder(p["ch"], p["out_ch"], p["ch_mult"], p["num_res_blocks"], p["in_channels"],
                               p["resolution"], p["z_channels"])

    def moments(self, x):
        mean, logvar = torch.chunk(self.encoder(x), 2, dim=1)  # DiagonalGaussian, chunk_dim 1
        return mean, logvar


# ---------------------------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def run_driver(*args, timeout=120):
    if not os.path.isfile(DRIVER):
        raise CheckFailed(f"driver binary not found: {DRIVER} (build it with `make -C trainer-cuda cpu`, "
                          f"or point GRAFT_VAE_CHECK at it)")
    cmd = [DRIVER] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"`{' '.join(cmd)}` did not finish within {timeout} s")
    if r.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {r.returncode}: {(r.stderr.strip() or r.stdout.strip())[-1500:]}")


def rel_err(got, ref, min_scale=1e-30):
    """max|got - ref| / max|ref|, the scale never below min_scale."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        raise CheckFailed(f"shape {list(got.shape)}, expected {list(ref.shape)}")
    if not np.all(np.isfinite(got)):
        raise CheckFailed(f"{int(np.sum(~np.isfinite(got)))} non-finite values")
    return float(np.max(np.abs(got - ref))) / max(float(np.max(np.abs(ref))), min_scale)


def make_model(seed):
    torch.manual_seed(seed)
    model = AutoEncoder(CONFIG)
    with torch.no_grad():  # GroupNorm affine away from 1/0, so its gradients matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith(".weight") else 0.0) + 0.1 * torch.randn_like(p))
    return model


def reference(model, dtype, image, z, noise):
    """Encode, decode and the training loss (with gradients) in the given dtype."""
    m = make_model(0)
    m.load_state_dict(model.state_dict())
    m = m.to(dtype)
    img = torch.tensor(image, dtype=dtype)
    with torch.no_grad():
        mean, logvar = m.moments(img)
        latent = SCALE_FACTOR * (mean - SHIFT_FACTOR)  # AutoEncoder.encode
        dec = m.decoder(torch.tensor(z, dtype=dtype))
    img.requires_grad_(True)
    mean, logvar = m.moments(img)
    zs = mean + torch.exp(0.5 * logvar) * torch.tensor(noise, dtype=dtype)
    recon = m.decoder(zs)
    kl = torch.mean(0.5 * (mean ** 2 + torch.exp(logvar) - 1.0 - logvar))
    loss = torch.mean((recon - img) ** 2) + KL_WEIGHT * kl
    loss.backward()
    out = {"mean": mean.detach(), "logvar": logvar.detach(), "latent": latent, "decode": dec,
           "loss": loss.detach().reshape(1), "recon": recon.detach(), "grad.image": img.grad}
    for name, p in m.named_parameters():
        out["grad." + name] = p.grad
    return {k: v.double().numpy() for k, v in out.items()}


def main():
    t0 = time.time()
    results = []

    def check(name, fn):
        try:
            msg = fn()
            results.append(True)
            print(f"ok    {name}" + (f"  ({msg})" if msg else ""))
        except Exception as e:  # noqa: BLE001 - every failure is reported, none skipped
            results.append(False)
            detail = str(e) if isinstance(e, CheckFailed) else traceback.format_exc().strip()
            print(f"FAIL  {name}\n      {detail}")
        sys.stdout.flush()

    rng = np.random.default_rng(1234)
    model = make_model(7)
    image = rng.uniform(-1, 1, (B, 3, H, W)).astype(np.float32)
    h, w = H // 4, W // 4
    z = rng.normal(size=(B, CONFIG["z_channels"], h, w)).astype(np.float32)
    noise = rng.normal(size=(B, CONFIG["z_channels"], h, w)).astype(np.float32)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory(prefix="graft-vae-torch-") as tmp:
        ckpt = os.path.join(tmp, "ae.safetensors")
        st_write(ckpt, sd, {"graft.groups": GROUPS, "graft.scale_factor": SCALE_FACTOR,
                            "graft.shift_factor": SHIFT_FACTOR})
        ref = reference(model, torch.float64, image, z, noise)
        f32 = reference(model, torch.float32, image, z, noise)
        out = {}

        # The gradient of attention's key bias is zero in exact arithmetic (it adds q.b_k to a whole
        # row of scores, which softmax cancels), so its relative error is rounding over rounding:
        # every gradient is measured against at least 1e-3 of the largest weight gradient.
        grad_scale = 1e-3 * max(float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad."))

        def err_of(got, k):
            return rel_err(got, ref[k], grad_scale if k.startswith("grad.") else 1e-30)

        def compare(keys, tol_min):
            worst, lines = 0.0, []
            for k in keys:
                floor = err_of(f32[k], k)
                tol = max(tol_min, FLOOR_FACTOR * floor)
                err = err_of(out[k], k)
                worst = max(worst, err / tol)
                if not err <= tol:
                    lines.append(f"{k}: rel err {err:.2e} > tol {tol:.1e} (torch fp32 floor {floor:.1e})")
            if lines:
                raise CheckFailed("; ".join(lines[:6]) + (f"; ... {len(lines)} tensors in all" if len(lines) > 6 else ""))
            return worst

        def encode():
            st_write(os.path.join(tmp, "enc_in.safetensors"), {"image": image})
            run_driver("encode", ckpt, os.path.join(tmp, "enc_in.safetensors"), os.path.join(tmp, "enc_out.safetensors"))
            got, _ = st_read(os.path.join(tmp, "enc_out.safetensors"))
            out.update({k: got[k] for k in ("mean", "logvar", "latent")})
            compare(["mean", "logvar", "latent"], FWD_TOL_MIN)
            return ", ".join(f"{k} {rel_err(out[k], ref[k]):.1e}" for k in ("mean", "logvar", "latent"))

        def decode():
            st_write(os.path.join(tmp, "dec_in.safetensors"), {"z": z})
            run_driver("decode", ckpt, os.path.join(tmp, "dec_in.safetensors"), os.path.join(tmp, "dec_out.safetensors"))
            got, _ = st_read(os.path.join(tmp, "dec_out.safetensors"))
            out["decode"] = got["image"]
            compare(["decode"], FWD_TOL_MIN)
            return f"image {rel_err(out['decode'], ref['decode']):.1e}"

        def grads():
            st_write(os.path.join(tmp, "grad_in.safetensors"),
                     {"image": image, "noise": noise, "kl_weight": np.array([KL_WEIGHT], np.float32)})
            run_driver("grad", ckpt, os.path.join(tmp, "grad_in.safetensors"), os.path.join(tmp, "grad_out.safetensors"))
            got, _ = st_read(os.path.join(tmp, "grad_out.safetensors"))
            want = ["grad." + k for k in sd] + ["grad.image"]
            missing = [k for k in want if k not in got]
            if missing:
                raise CheckFailed(f"driver wrote no {missing[:3]}")
            out.update({k: got[k] for k in want + ["loss", "recon"]})
            compare(["loss", "recon"], FWD_TOL_MIN)
            compare(want, GRAD_TOL_MIN)
            errs = sorted(((err_of(out[k], k), k) for k in want), reverse=True)
            return (f"loss {rel_err(out['loss'], ref['loss']):.1e}, {len(want)} gradients, worst "
                    f"{errs[0][0]:.1e} ({errs[0][1]}), median {errs[len(errs) // 2][0]:.1e}")

        check("vae encode (mean, logvar, scaled latent) matches BFL in float64", encode)
        check("vae decode matches BFL in float64", decode)
        check("vae training-loss gradients of every weight and the image match torch autograd", grads)

    passed = sum(results)
    failed = len(results) - passed
    print(f"vae-torch: {passed} passed, {failed} failed ({time.time() - t0:.1f} s)")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
