#!/usr/bin/env bash
# Every GPU check of this project, for a machine with a CUDA GPU and python3 with torch (no network).
# Stages run in the order given by $STAGES (default: all, most needed first), each time-boxed, each writing under
# $OUT (default runs/gpu_checks); stages.txt gets each stage's seconds:
#   suite       tests.log        the whole test suite there (tests/test_gpu.py included: bf16/fp16 steps export,
#                                resume within tolerance, stage 2 CUDA == CPU)
#   all-blocks  all_blocks.log   every ResBlock compiled (the default compiles at most 8 shapes; warm-up > 150 s)
#   cudnn       cudnn*.log       the eager step with and without cuDNN's algorithm search, in two processes (cuDNN
#                                keeps its first choice per shape for the whole process)
#   full        full.log         the whole model compiled, and that replayed as CUDA graphs
#   default     default.log      the trainer's default step (NCHW, 8 block shapes compiled) and channels-last
#   seg         seg.json         perf/seg_memory.py: the FFHQ-34 protocol (20 + 20 images, 10 MLPs, 300 batches)
# Each throughput stage compiles into its own inductor cache folder, so its warm-up is a cold start.
# All stages outlast one 10-minute call: split them, e.g. STAGES="suite all-blocks" (at most 460 s), then
# STAGES="cudnn full" (at most 490 s), then STAGES="default seg". Throughput lines are printed as each variant
# finishes, so a cut-off run keeps the variants it finished.
# Missing packages can come as wheels in .whl/ (see the device notes): they are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
STAGES=${STAGES:-suite all-blocks cudnn full default seg}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1

throughput() {  # throughput LOG TIMEOUT VARIANTS
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_${1%.log} timeout "$2" python3 perf/pretrain_throughput.py --device cuda \
    --config configs/paper.yaml --batch 16 --steps 10 --variants "$3" --json > "$OUT/$1" 2>&1
  echo "rc=$?" >> "$OUT/$1"
}

for stage in $STAGES; do
  start=$SECONDS
  case $stage in
    suite) timeout "${SUITE_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider > "$OUT/tests.log" 2>&1
           echo "suite rc=$?" >> "$OUT/tests.log" ;;
    cudnn) throughput cudnn_search.log 80 none; throughput cudnn_no_search.log 80 none-no-cudnn-benchmark ;;
    all-blocks) throughput all_blocks.log 260 all-blocks ;;
    full) throughput full.log 330 full,full-cudagraphs ;;
    default) throughput default.log 200 default,channels-last ;;
    seg) timeout 100 python3 perf/seg_memory.py --device cuda --members 10 --steps 300 --test-images 20 --json \
           > "$OUT/seg.json" 2>&1
         echo "seg rc=$?" >> "$OUT/stages.txt" ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
  echo "$stage: $((SECONDS - start)) s" >> "$OUT/stages.txt"
done
