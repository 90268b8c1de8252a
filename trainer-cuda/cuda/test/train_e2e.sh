#!/usr/bin/env bash
# End to end on a GPU: graft-trainer trains the make-tiny job (300 steps, batch 2, LoRA rank 16) once
# on the CPU and once with device cuda:0 (same seed, so the same data, timesteps and noise each step),
# and a short run with device auto must pick the GPU. The GPU run passes when its loss falls like the
# CPU run's:
#   mean of the first 10 losses within 5% of the CPU's (same start, bf16 vs fp32 only),
#   mean of the last 10 within 20% of the CPU's, and below half its own first-10 mean.
# Usage: train_e2e.sh [path/to/graft-trainer]   (prints "e2e: PASS ..." or "e2e: FAIL ...")
set -uo pipefail
TRAINER=${1:-build/graft-trainer}
dir=$(mktemp -d /tmp/graft-e2e-XXXXXX)
trap 'rm -rf "$dir"' EXIT

"$TRAINER" make-tiny "$dir/cpu" --seed 3 >/dev/null || { echo "e2e: FAIL make-tiny"; exit 1; }
cp -r "$dir/cpu" "$dir/gpu"
cp -r "$dir/cpu" "$dir/auto"
sed -i 's/"device": "cpu"/"device": "cuda:0"/' "$dir/gpu/job.json"
sed -i 's/"device": "cpu"/"device": "auto"/; s/"steps": 300/"steps": 5/' "$dir/auto/job.json"
grep -q '"device": "cuda:0"' "$dir/gpu/job.json" || { echo "e2e: FAIL could not set the device in job.json"; exit 1; }

start=$SECONDS
"$TRAINER" train "$dir/cpu" >"$dir/cpu.log" 2>&1 &
cpu_pid=$!
"$TRAINER" train "$dir/gpu" >"$dir/gpu.log" 2>&1
gpu_rc=$?
gpu_s=$((SECONDS - start))
wait $cpu_pid
cpu_rc=$?
"$TRAINER" train "$dir/auto" >"$dir/auto.log" 2>&1
auto_rc=$?
for run in cpu gpu auto; do
  echo "--- $run run (last lines)"
  tail -n 3 "$dir/$run.log"
done
[ $gpu_rc = 0 ] && [ $cpu_rc = 0 ] && [ $auto_rc = 0 ] || { echo "e2e: FAIL exit codes cpu $cpu_rc gpu $gpu_rc auto $auto_rc"; exit 1; }

python3 - "$dir" "$gpu_s" <<'EOF'
import json, sys
d, gpu_s = sys.argv[1], float(sys.argv[2])
def load(run):
    return [json.loads(l) for l in open(f"{d}/{run}/metrics.jsonl")]
def losses(ev):
    return [e["loss"] for e in ev if e["event"] == "step"]
cpu, gpu, auto = load("cpu"), load("gpu"), load("auto")
lc, lg = losses(cpu), losses(gpu)
mean = lambda xs: sum(xs) / len(xs)
fc, fg, lc10, lg10 = mean(lc[:10]), mean(lg[:10]), mean(lc[-10:]), mean(lg[-10:])
dev_gpu = gpu[0].get("device", "?")
dev_auto = auto[0].get("device", "?")
vram = max(e.get("vram_mb", 0) for e in gpu if e["event"] == "step")
ok_first = abs(fg - fc) / fc <= 0.05
ok_last = abs(lg10 - lc10) / lc10 <= 0.20
ok_fall = lg10 < 0.5 * fg
ok_auto = dev_auto.startswith("cuda:")
ok = len(lg) == 300 and ok_first and ok_last and ok_fall and ok_auto and dev_gpu.startswith("cuda:")
print(f"e2e: {'PASS' if ok else 'FAIL'} tiny LoRA 300 steps; cpu loss {fc:.4f} -> {lc10:.4f}; "
      f"{dev_gpu} loss {fg:.4f} -> {lg10:.4f} (first-10 diff {100 * abs(fg - fc) / fc:.1f}% tol 5%, "
      f"last-10 diff {100 * abs(lg10 - lc10) / lc10:.1f}% tol 20%); gpu run {gpu_s:.1f} s, vram_mb {vram}; "
      f"auto picked '{dev_auto}'")
sys.exit(0 if ok else 1)
EOF
