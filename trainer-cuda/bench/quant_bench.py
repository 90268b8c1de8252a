#!/usr/bin/env python3
"""The quantized formats (model.quantize) on a random checkpoint of FLUX.1-dev's width at reduced depth:
for bf16 and each format, the weights as loaded, the peak RSS of a LoRA training step (the CPU's stand-in
for device memory) beside the memory plan's figure, the step time, and the error of one whole forward
against the bf16 model's (relative L2 and max of the output).

Run: make bench-quant   (about 5 minutes on 2 cores; the checkpoint is 2.5 GB in /tmp unless KEEP_DIR)
Env: DOUBLE, SINGLE (depth, default 2 and 4), TOKENS (image tokens, default 256), DEVICE (default cpu).
"""
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_flux_torch import TRAINER, st_read, st_write  # noqa: E402

DOUBLE, SINGLE = os.environ.get("DOUBLE", "2"), os.environ.get("SINGLE", "4")
TOKENS = int(os.environ.get("TOKENS", "256"))
DEVICE = os.environ.get("DEVICE", "cpu")
FORMATS = ["none", "fp8", "int8", "nf4"]


def run(*args):
    r = subprocess.run([TRAINER] + [str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return r.stdout


def main():
    tmp = os.environ.get("KEEP_DIR") or tempfile.mkdtemp(prefix="graft-quant-bench-")
    ckpt = os.path.join(tmp, "fluxdev.safetensors")
    if not os.path.exists(ckpt):
        run("make-random", "flux", ckpt, "--shape", "dev", "--double", DOUBLE, "--single", SINGLE, "--dtype", "bf16")
    side = int(round(TOKENS ** 0.5))
    rng = np.random.default_rng(3)
    inp = {
        "img": rng.standard_normal((1, TOKENS, 64)).astype(np.float32),
        "img_ids": np.stack(np.meshgrid(np.zeros(1), np.arange(side), np.arange(side), indexing="ij"), -1)
                     .reshape(1, TOKENS, 3).astype(np.float32),
        "txt": rng.standard_normal((1, 64, 4096)).astype(np.float32),
        "txt_ids": np.zeros((1, 64, 3), np.float32),
        "timesteps": np.array([0.5], np.float32),
        "y": rng.standard_normal((1, 768)).astype(np.float32),
        "guidance": np.array([3.5], np.float32),
    }
    ip = os.path.join(tmp, "inputs.safetensors")
    st_write(ip, inp)
    outs, rows = {}, []
    for f in FORMATS:
        op = os.path.join(tmp, f"out_{f}.safetensors")
        run("forward", ckpt, ip, op, "--quantize", f, "--device", DEVICE)
        outs[f] = st_read(op)[0]["out"].astype(np.float64)
        line = run("lora-step", ckpt, "--image-tokens", TOKENS, "--text-tokens", 64, "--steps", 2, "--quantize", f,
                   "--device", DEVICE)
        num = lambda pat: float(re.search(pat, line).group(1))  # noqa: E731
        rows.append((f, num(r"weights (\d+) MiB"), num(r"peak RSS (\d+) MiB"), num(r"\((\d+) before"),
                     num(r"the memory plan: (\d+) MiB"), num(r"last step ([\d.]+) s"), num(r"load ([\d.]+) s")))
        print(line.strip(), flush=True)
    ref = outs["none"]
    print(f"\nFLUX.1-dev width, {DOUBLE} double + {SINGLE} single blocks, bf16 checkpoint, LoRA rank 16, "
          f"{TOKENS} image + 64 text tokens, {DEVICE}:")
    print(f"{'format':7} {'weights MiB':>11} {'x bf16':>6} {'peak RSS MiB':>12} {'x bf16':>6} {'plan MiB':>8} "
          f"{'step s':>6} {'load s':>6} {'fwd rel L2':>10} {'fwd max err':>11}")
    base_w, base_rss = rows[0][1], rows[0][2] - rows[0][3]
    for (f, wmib, rss, rss0, plan, step, load) in rows:
        e = outs[f] - ref
        rel = np.linalg.norm(e) / np.linalg.norm(ref)
        print(f"{f:7} {wmib:11.0f} {wmib / base_w:6.2f} {rss:12.0f} {(rss - rss0) / base_rss:6.2f} {plan:8.0f} "
              f"{step:6.2f} {load:6.1f} {rel:10.2e} {np.max(np.abs(e)) / np.max(np.abs(ref)):11.2e}")
    print("(x bf16 of the peak RSS: above what the process held before loading)")


if __name__ == "__main__":
    main()
