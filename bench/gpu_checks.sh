#!/usr/bin/env bash
# Every GPU check of this project in one run, for a machine with a CUDA GPU and python3 with torch (no network).
# Each step is time-boxed and writes its output under $OUT (default runs/gpu_checks):
#   gpu_tests.log    tests/test_gpu.py: bf16/fp16 steps export, resume within tolerance, stage 2 CUDA == CPU
#   seg.json         bench/seg_memory.py --device cuda: the FFHQ-34 protocol (20 + 20 images, 10 MLPs, 300 batches)
#   throughput.json  bench/pretrain_throughput.py --device cuda: the paper preset step and its speed-ups
#   tests.log        the whole test suite on the GPU machine
# Missing packages can come as wheels in .whl/ (see the device notes): they are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?" >> "$OUT/gpu_tests.log"
timeout 120 python3 bench/seg_memory.py --device cuda --members 10 --steps 300 --test-images 20 --json \
  > "$OUT/seg.json" 2>&1
timeout 220 python3 bench/pretrain_throughput.py --device cuda --config configs/paper.yaml --batch 16 --steps 10 \
  --json > "$OUT/throughput.json" 2>&1
timeout "${SUITE_TIMEOUT:-120}" python3 -m pytest -q -p no:cacheprovider -x > "$OUT/tests.log" 2>&1
echo "suite rc=$?" >> "$OUT/tests.log"
