#!/usr/bin/env bash
# The GPU benchmarks as one prepared script that ends within a deadline (default 450 s: an 8-minute slot):
# each step has an expected duration on an H200 and is skipped, with a JSON line saying so, when it would
# run past the deadline, and every step is stopped at the deadline. The steps, in this order:
#   - the gpu-marked pytest (exactness of the CUDA copy path and of chunked capture on this GPU);
#   - capture overhead, Qwen3-8B shape (random weights, bf16, sdpa, batch 1, 300 sampled query heads,
#     uniform sampler with bucket 8192, full-attention layers) at 8k and 32k tokens;
#   - long context, the whole model at 131,072 tokens: peak memory and tokens/s with token_chunk=8192 and in
#     one pass (each in a fresh process);
#   - long context at 1,048,576 tokens in 80 GB (emulated with torch.cuda.set_per_process_memory_fraction),
#     with the chunks the budget picks. Memory is per layer (no KV cache, one layer at a time), so one
#     decoder layer is built and the other 35 layers' weights are held as one allocation: the peak is the
#     whole model's; extrapolated_forward_s (x36) is an extrapolation, labelled as such in every record;
#   - capture overhead at 128k, then layers 0-8 at 128k (early stop);
#   - 1,048,576 tokens in one pass on the whole device (to compare the memory model with a real peak).
#
#   scripts/gpu_bench.sh                        # from anywhere; runs in the repository root
#   DEADLINE=600 PY=.venv/bin/python scripts/gpu_bench.sh
#   SMOKE=1 scripts/gpu_bench.sh                # every step on the CPU, tiny model and lengths: checks the
#                                               # script's plumbing in a few minutes, measures nothing
#
# Needs one CUDA GPU (about 80 GB free for step 4's first run, the whole of an H200 for its second), torch,
# transformers (5.x), hydra-core, omegaconf, numpy, pyarrow; no network, no datasets/wandb/dotenv. Every
# record is one JSON line in $OUT/gpu_bench.jsonl (OUT defaults to /tmp); each step's whole output is in
# $OUT/gpu_bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp}
DEADLINE=${DEADLINE:-450}
JSONL="$OUT/gpu_bench.jsonl"
LOG="$OUT/gpu_bench.log"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
: > "$JSONL"
: > "$LOG"

SMOKE=${SMOKE:-0}
"$PY" - "$SMOKE" <<'PY' || exit 1
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "hydra", "omegaconf", "pyarrow", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_bench: missing Python packages: {', '.join(missing)}")
import torch, transformers
if sys.argv[1] == "1":
    sys.exit(print(f"gpu_bench: SMOKE=1, on the CPU: torch {torch.__version__}, transformers {transformers.__version__}"))
if not torch.cuda.is_available():
    sys.exit("gpu_bench: no CUDA device visible")
free, total = torch.cuda.mem_get_info()
print(f"gpu_bench: {torch.cuda.get_device_name(0)} ({total / 1e9:.0f} GB, {free / 1e9:.0f} GB free), torch "
      f"{torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}", flush=True)
PY

# step NAME SECONDS CMD...: run CMD unless it is expected to end past the deadline, and stop it (its whole
# process group) at the deadline in any case; keep its JSON lines.
step() {
  local name=$1 expected=$2
  shift 2
  if (( SECONDS + expected > DEADLINE )); then
    echo "=== $name: skipped (${SECONDS}s elapsed, expects ${expected}s, deadline ${DEADLINE}s)"
    printf '{"step": "%s", "status": "skipped: would pass the %ss deadline"}\n' "$name" "$DEADLINE" >> "$JSONL"
    return
  fi
  echo "=== $name (${SECONDS}s elapsed): $*"
  local start=$SECONDS
  timeout -k 10 $((DEADLINE - SECONDS)) "$@" 2>&1 | tee -a "$LOG" | tee "$OUT/gpu_bench_step.txt"
  local rc=${PIPESTATUS[0]}
  grep '^{' "$OUT/gpu_bench_step.txt" | sed "s/^{/{\"step\": \"$name\", \"rc\": $rc, \"step_s\": $((SECONDS - start)), /" >> "$JSONL"
  if ! grep -q '^{' "$OUT/gpu_bench_step.txt"; then
    local why="no JSON line; see gpu_bench.log"
    (( rc == 124 || rc == 137 )) && why="stopped at the ${DEADLINE}s deadline"
    printf '{"step": "%s", "rc": %s, "status": "%s"}\n' "$name" "$rc" "$why" >> "$JSONL"
  fi
}

# Random weights: the rotation's parameters do not change the cost, so the position limit is raised to 1M.
MODEL=(model=qwen3-8b model.random_init=true model.dtype=bfloat16 model.attn_implementation=sdpa
       ++model.config_overrides.max_position_embeddings=1048576)
K8=8192 K32=32768 K128=131072 M1=1048576
if [[ $SMOKE == 1 ]]; then
  MODEL=(model=bench-8l model.architecture.num_hidden_layers=36 model.architecture.hidden_size=64
         model.architecture.intermediate_size=128 model.architecture.num_attention_heads=32
         model.architecture.num_key_value_heads=8 model.architecture.head_dim=8)
  K8=256 K32=512 K128=1024 M1=2048
fi
OVERHEAD=("${MODEL[@]}" sampler=uniform_8192 capture.full_attention_only=true dataset.num_examples=1
          inference.batch_size=1 capture.head_sampling.count=300)
LONG=("${MODEL[@]}" bench.mode=long_context sampler=uniform_8192 capture.head_sampling.count=32
      bench.repeats=1 bench.warmup=0 bench.early_stop=false)

if [[ $SMOKE != 1 ]] && "$PY" -c "import pytest" 2>/dev/null; then
  step pytest-gpu 45 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_speed_paths.py \
    tests/integration/test_long_context.py
fi
step overhead-8k 30 "$PY" -m qk_sniffer.bench "${OVERHEAD[@]}" dataset.seq_len=$K8 bench.repeats=3 bench.warmup=1
step overhead-32k 40 "$PY" -m qk_sniffer.bench "${OVERHEAD[@]}" dataset.seq_len=$K32 bench.repeats=3 bench.warmup=1
step long-128k 75 "$PY" -m qk_sniffer.bench "${LONG[@]}" "bench.lengths=[$K128]" inference.token_chunk=8192
step long-1m-80gb 60 "$PY" -m qk_sniffer.bench "${LONG[@]}" "bench.lengths=[$M1]" bench.layers_built=1 \
  bench.device_gb=80 'bench.arms=[budget]'
step overhead-128k 75 "$PY" -m qk_sniffer.bench "${OVERHEAD[@]}" dataset.seq_len=$K128 bench.repeats=2 bench.warmup=0
# Early stop: layers 0-8 hold 288 query heads, fewer than 300, so all of them are captured (more work than a
# 300-head sample would be); the forward ends inside layer 8.
step early-stop-128k 55 "$PY" -m qk_sniffer.bench "${OVERHEAD[@]}" dataset.seq_len=$K128 \
  'capture.layers=[0,1,2,3,4,5,6,7,8]' capture.head_sampling.count=null bench.repeats=2 bench.warmup=0
step long-1m-one-pass 60 "$PY" -m qk_sniffer.bench "${LONG[@]}" "bench.lengths=[$M1]" bench.layers_built=1 \
  'bench.arms=[one_pass]'

echo "=== ${SECONDS}s; JSON lines ($JSONL)"
cat "$JSONL"
