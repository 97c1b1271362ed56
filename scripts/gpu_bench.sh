#!/usr/bin/env bash
# The GPU half of the speed issue, as one prepared script: the Qwen3-8B-shape capture benchmark (random
# weights, bf16, sdpa, batch 1, 300 sampled query heads, uniform sampler with bucket 8192, full-attention
# layers) at 8k, 32k and 128k tokens, then the early-stop case (layers 0-8 at 128k).
#
#   scripts/gpu_bench.sh                 # from anywhere; runs in the repository root
#   PY=.venv/bin/python scripts/gpu_bench.sh bench.repeats=3    # extra overrides go to every run
#
# Needs one CUDA GPU with about 40 GiB free, and torch, transformers (5.x), hydra-core, omegaconf, pyarrow,
# numpy; no network, no datasets/wandb/huggingface_hub login. Each run prints its table and, last, its JSON
# line; all JSON lines are collected in $OUT/gpu_bench.jsonl (OUT defaults to /tmp). About 5 minutes on
# an H200, most of it the 128k runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-/tmp}
JSONL="$OUT/gpu_bench.jsonl"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "transformers", "hydra", "omegaconf", "pyarrow", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_bench: missing Python packages: {', '.join(missing)}")
import torch, transformers
if not torch.cuda.is_available():
    sys.exit("gpu_bench: no CUDA device visible")
print(f"gpu_bench: {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}", flush=True)
PY

# Exactness of the pinned, asynchronous copy path on this GPU (seconds), when pytest is there.
if "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/integration/test_speed_paths.py
fi

: > "$JSONL"
COMMON=(model=qwen3-8b model.random_init=true model.dtype=bfloat16 model.attn_implementation=sdpa
        sampler=uniform_8192 capture.full_attention_only=true dataset.num_examples=1 inference.batch_size=1)
bench() {
  echo "=== python -m qk_sniffer.bench $*"
  "$PY" -m qk_sniffer.bench "${COMMON[@]}" "$@" | tee "$OUT/gpu_bench_last.txt"
  tail -n 1 "$OUT/gpu_bench_last.txt" >> "$JSONL"
}

bench dataset.seq_len=8192 capture.head_sampling.count=300 bench.repeats=7 bench.warmup=2 "$@"
bench dataset.seq_len=32768 capture.head_sampling.count=300 bench.repeats=5 bench.warmup=1 "$@"
bench dataset.seq_len=131072 capture.head_sampling.count=300 bench.repeats=3 bench.warmup=1 "$@"
# Early stop: layers 0-8 hold 288 query heads, fewer than 300, so all of them are captured (more work
# than a 300-head sample would be); the forward ends inside layer 8.
bench dataset.seq_len=131072 'capture.layers=[0,1,2,3,4,5,6,7,8]' capture.head_sampling.count=null \
  bench.repeats=3 bench.warmup=1 "$@"

echo "=== JSON lines ($JSONL)"
cat "$JSONL"
