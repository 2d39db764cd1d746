#!/usr/bin/env bash
# The GPU checks of the issues, in one go, on a machine with a CUDA device:
#   bash benchmarks/gpu_checks.sh [RESULTS_DIR]        (default: gpu-results/)
# Each step writes RESULTS_DIR/<step>.json (one JSON object) and appends its log to
# RESULTS_DIR/log.txt; a failing step does not stop the next. Needs the ingested data
# (`maas ingest` writes data/bbc-news) and Tiny Shakespeare (SHAKESPEARE=path, default
# ../shared/datasets/tinyshakespeare/input.txt). Runs the components only: no MLflow or Prefect,
# BentoML for the serving step. About 5 minutes on one H200.
set -u
cd "$(dirname "$0")/.."
RESULTS=${1:-gpu-results}
SHAKESPEARE=${SHAKESPEARE:-../shared/datasets/tinyshakespeare/input.txt}
PY=${PY:-python3}
BUNDLES=$(mktemp -d)
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1

step() {  # step NAME command...
  local name=$1 started
  shift
  started=$(date +%s)
  echo "== $name" | tee -a "$RESULTS/log.txt"
  "$@" > "$RESULTS/$name.json" 2>> "$RESULTS/log.txt"
  echo "== $name: exit $? in $(( $(date +%s) - started )) s" | tee -a "$RESULTS/log.txt"
}

step gpu_tests $PY -m pytest -q -p no:cacheprovider tests/components/test_engine.py -k cuda
step gpt_shakespeare $PY benchmarks/gpt_shakespeare.py --config configs/gpt-shakespeare-gpu.yaml \
  --data "$SHAKESPEARE" --json
step train_throughput $PY benchmarks/train_throughput.py --batch-size 64 --max-length 512 --steps 30 \
  --pretrained-steps 20 --warmup 3 --json
step classifier_accuracy $PY benchmarks/classifier_accuracy.py --config gpu --save "$BUNDLES" --json
# The model-bound serving case: the MiniLM just fine-tuned, batched against unbatched (>= 3x).
step serve_load $PY benchmarks/serve_load.py --bundle "$BUNDLES/pretrained" --concurrency 32 \
  --modes batched,unbatched --model-bound-requests 600 --json
rm -rf "$BUNDLES"
