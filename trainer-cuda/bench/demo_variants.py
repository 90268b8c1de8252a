#!/usr/bin/env python3
"""The demo LoRA job (make demo's, shortened as test/demo.test.ts runs it) trained once per adapter and
optimizer, each measured by `graft-trainer demo-eval` at the same seeds: the bar-likeness gain with the
trigger (concept), the pixel change on prompts without it against what another seed changes (leak), the
optimizer's state bytes per adapter parameter, the mean loss of the last 50 steps and the time.

Run: make bench-demo-variants   (python3, the built trainer and dist/; about 5 minutes a variant on 2 cores)
Env: STEPS (default 300), SEEDS (demo-eval seeds, default 2), ONLY (comma-separated variant names).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER = os.path.join(ROOT, "trainer-cuda", "build", "graft-trainer")
CLI = os.path.join(ROOT, "dist", "src", "cli.js")
MODEL = os.path.join(ROOT, "presets", "graft-tiny")
STEPS = int(os.environ.get("STEPS", "300"))
SEEDS = os.environ.get("SEEDS", "2")

# name: (network, optimizer, optimizer_params, lr[, model settings]). The demo's lr is 2e-3; Lion takes a
# smaller one (its sign update has unit size per element), Prodigy its multiplier 1. The quantized
# variants train on the transformer in that format; demo-eval measures their LoRA on the unquantized model.
VARIANTS = {
    "lora+adamw": ({"type": "lora"}, "adamw", {}, 2e-3),
    "lora+adamw8bit": ({"type": "lora"}, "adamw8bit", {}, 2e-3),
    "lora+adafactor": ({"type": "lora"}, "adafactor", {}, 2e-3),
    "lora+lion": ({"type": "lora"}, "lion", {}, 5e-4),
    "lora+prodigy": ({"type": "lora"}, "prodigy", {}, 1.0),
    "lokr+adamw": ({"type": "lokr", "lokr_factor": -1}, "adamw", {}, 2e-3),
    "lokr-full-f4+adamw": ({"type": "lokr", "lokr_factor": 4, "lokr_full_rank": True}, "adamw", {}, 2e-3),
    "lokr-full-f4+adamw@1e-2": ({"type": "lokr", "lokr_factor": 4, "lokr_full_rank": True}, "adamw", {}, 1e-2),
    "lora+adamw on fp8": ({"type": "lora"}, "adamw", {}, 2e-3, {"quantize": "fp8"}),
    "lora+adamw on int8": ({"type": "lora"}, "adamw", {}, 2e-3, {"quantize": "int8"}),
    "lora+adamw on nf4": ({"type": "lora"}, "adamw", {}, 2e-3, {"quantize": "nf4"}),
}


def run(*args, env=None):
    r = subprocess.run(list(args), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return r.stdout


def events(job):
    with open(os.path.join(job, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    only = [v for v in os.environ.get("ONLY", "").split(",") if v]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    with tempfile.TemporaryDirectory(prefix="graft-demo-variants-") as tmp:
        base = os.path.join(tmp, "demo_zxq")
        run(TRAINER, "demo-job", MODEL, base, "--steps", str(STEPS))
        run("node", CLI, "prepare", os.path.join(base, "config.yaml"), env=env)
        with open(os.path.join(base, "job.json")) as f:
            job0 = json.load(f)
        rows = []
        for name, (network, optimizer, params, lr, *model) in VARIANTS.items():
            if only and name not in only:
                continue
            job = os.path.join(tmp, name)
            shutil.copytree(base, job)
            j = json.loads(json.dumps(job0))
            j["output_dir"] = job
            j["sample"]["disable_sampling"] = True  # demo-eval samples, at fixed seeds with and without the adapter
            j["network"].update(network)
            j["model"].update(model[0] if model else {})
            j["train"].update({"optimizer": optimizer, "optimizer_params": params, "lr": lr})
            with open(os.path.join(job, "job.json"), "w") as f:
                json.dump(j, f)
            t0 = time.time()
            run(TRAINER, "train", job, env=env)
            secs = time.time() - t0
            ev = events(job)
            start = next(e for e in ev if e["event"] == "start")
            losses = [e["loss"] for e in ev if e["event"] == "step"]
            out = run(TRAINER, "demo-eval", MODEL, os.path.join(job, "demo_zxq.safetensors"), "--seeds", SEEDS,
                      "--steps", "12", env=env)
            e = json.loads(out.strip().split("\n")[-1])
            rows.append((name, e["concept_iou_lora"] - e["concept_iou_base"], e["leak_change"] / e["seed_change"],
                         start["optimizer_state_bytes"] / start["lora_params"], start["lora_params"],
                         sum(losses[-50:]) / len(losses[-50:]), secs))
            print(f"{name}: {out.strip().splitlines()[0]}", flush=True)
        print(f"\ndemo job, {STEPS} steps, demo-eval over {SEEDS} seeds:")
        print(f"{'variant':24} {'concept gain':>12} {'leak/seed':>10} {'state B/param':>13} {'params':>8} "
              f"{'loss (last 50)':>14} {'time':>7}")
        for r in rows:
            print(f"{r[0]:24} {r[1]:+12.3f} {r[2]:10.3f} {r[3]:13.2f} {r[4]:8d} {r[5]:14.4f} {r[6]:6.0f}s")


if __name__ == "__main__":
    main()
