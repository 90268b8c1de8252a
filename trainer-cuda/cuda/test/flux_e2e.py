#!/usr/bin/env python3
"""A whole FLUX.1 job at real size, timed phase by phase: what issue 19 asks to measure on a GPU.

graft-trainer writes a random FLUX.1-dev in the diffusers layout (every component at its real size with
--shape dev: transformer 12B, T5-XXL, CLIP-L, autoencoder; about 34 GB in bf16), this script writes 20
pictures and a job.json with 20 distinct captions (token ids of the right form, made here: the captions'
words do not matter to the timing), and the trainer encodes them (autoencoder, CLIP, T5), trains 30 LoRA
steps and draws one sample. Printed: the time of each phase and the peak device memory, from
metrics.jsonl. Needs python3 only (no numpy, no PIL): the PNGs are written with zlib.

  flux_e2e.py TRAINER [--shape dev|tiny] [--device cuda:0] [--size 1024] [--images 20] [--steps 30]
              [--sample-steps 20] [--dir D] [--keep]

--shape tiny --device cpu --size 64 runs the same path in seconds on any machine.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib


def write_png(path, w, h, seed):
    """An RGB picture of smooth bands and a little noise: something an autoencoder has to encode."""
    rows = []
    state = seed * 2654435761 % 2**32 or 1
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            state = (1103515245 * state + 12345) % 2**31
            n = state >> 27
            row += bytes(((x * 255 // w + n) & 255, (y * 255 // h + 3 * seed) & 255, ((x + y) * 127 // (w + h) + n) & 255))
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 1)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def tokens(i, clip_vocab, t5_vocab):
    """Token lists of the form FLUX.1's tokenizers give: CLIP bos .. eos padded with eos (77); T5 .. </s> padded with 0 (512)."""
    words = [(i * 7 + k * 13) % 400 + 300 for k in range(8 + i % 5)]
    bos, eos = clip_vocab - 2, clip_vocab - 1
    clip = [bos] + [w % (clip_vocab - 2) for w in words] + [eos]
    t5 = [w % (t5_vocab - 2) + 2 for w in words] + [1]
    return {"clip_l": clip + [eos] * (77 - len(clip)), "t5": t5 + [0] * (512 - len(t5))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trainer")
    ap.add_argument("--shape", default="dev")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    root = a.dir or tempfile.mkdtemp(prefix="graft-flux-e2e-")
    os.makedirs(root, exist_ok=True)
    model, job = os.path.join(root, "model"), os.path.join(root, "job")
    try:
        t0 = time.time()
        if not os.path.exists(os.path.join(model, "model_index.json")):
            r = subprocess.run([a.trainer, "make-random", "flux-model", model, "--layout", "diffusers", "--shape", a.shape, "--dtype", "bf16"])
            if r.returncode != 0:
                print("flux-e2e: FAIL make-random flux-model"); return 1
        made = time.time() - t0
        clip_vocab = json.load(open(os.path.join(model, "text_encoder", "config.json")))["vocab_size"]
        t5_vocab = json.load(open(os.path.join(model, "text_encoder_2", "config.json")))["vocab_size"]

        os.makedirs(os.path.join(job, "prepared"), exist_ok=True)
        items = []
        for i in range(a.images):
            name = "prepared/%02d.png" % i
            write_png(os.path.join(job, name), a.size, a.size, i + 1)
            t = tokens(i, clip_vocab, t5_vocab)
            items.append({"image": name, "key": "flux-e2e-%02d" % i, "width": a.size, "height": a.size, "source": name,
                          "caption": "caption %d" % i, "tokens": t, "dropout_tokens": t})
        empty = {"clip_l": [clip_vocab - 2, clip_vocab - 1] + [clip_vocab - 1] * 75, "t5": [1] + [0] * 511}
        spec = {
            "format": "graft-job/2", "name": "flux_e2e", "device": a.device,
            "model": {"arch": "flux", "name_or_path": model, "transformer": os.path.join(model, "transformer"),
                      "text_encoders": {"clip_l": os.path.join(model, "text_encoder"), "t5": os.path.join(model, "text_encoder_2")},
                      "ae": os.path.join(model, "vae")},
            "network": {"type": "lora", "linear": 16, "linear_alpha": 16},
            "train": {"steps": a.steps, "batch_size": 1, "lr": 1e-4, "optimizer": "adamw", "timestep_type": "sigmoid", "seed": 42,
                      "guidance": 1, "cache_latents": True, "cache_text_embeddings": True, "gradient_checkpointing": True},
            "save": {"dtype": "bf16", "save_every": 100000, "max_step_saves_to_keep": 1},
            "cache_dir": os.path.join(job, "cache"),
            "text": {"encoders": {"clip_l": {"max_len": 77}, "t5": {"max_len": 512}}, "empty_tokens": empty},
            "datasets": [{"folder": job, "weight": 1.0, "is_reg": False, "caption_dropout_rate": 0.0, "items": items}],
            "sample": {"sample_every": a.steps, "width": a.size, "height": a.size, "seed": 42, "walk_seed": False,
                       "guidance_scale": 1, "guidance": 3.5, "shift": "resolution", "sample_steps": a.sample_steps,
                       "skip_first_sample": True,
                       "prompts": [{"prompt": "a sample", "tokens": tokens(99, clip_vocab, t5_vocab), "width": a.size, "height": a.size,
                                    "seed": 42, "lora_scale": 1.0}]},
        }
        with open(os.path.join(job, "job.json"), "w") as f:
            json.dump(spec, f)

        t1 = time.time()
        r = subprocess.run([a.trainer, "train", job])
        total = time.time() - t1
        if r.returncode != 0:
            print("flux-e2e: FAIL the trainer exited with %d" % r.returncode); return 1
        ev = [json.loads(l) for l in open(os.path.join(job, "metrics.jsonl"))]
        cache = next(e for e in ev if e["event"] == "cache")
        steps = [e for e in ev if e["event"] == "step"]
        samples = [e for e in ev if e["event"] == "sample"]
        secs = sorted(e["s_per_step"] for e in steps[1:]) or [steps[0]["s_per_step"]]
        losses = [e["loss"] for e in steps]
        ok = len(steps) == a.steps and len(samples) == 1 and all(l == l and l > 0 for l in losses)
        print("flux-e2e: %s shape %s on %s at %d px: model written in %.0f s; encode %d pictures + %d captions %.1f s; "
              "%d steps: first %.2f s, median %.3f s/step; sample (%d steps) %.1f s; peak device memory %d MB; "
              "trainer wall %.0f s (load included); loss %.3f -> %.3f"
              % ("PASS" if ok else "FAIL", a.shape, a.device, a.size, made, cache["latents_encoded"], cache["text_encoded"],
                 cache["seconds"], len(steps), steps[0]["s_per_step"], secs[len(secs) // 2], a.sample_steps,
                 samples[0]["seconds"] if samples else float("nan"), max(e.get("vram_mb", 0) for e in steps), total,
                 losses[0], losses[-1]))
        return 0 if ok else 1
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
