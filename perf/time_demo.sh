#!/usr/bin/env bash
# Time `make demo` as a new user would: a fresh clone, a fresh .venv, the CPU norm kernel built for the first time.
#   perf/time_demo.sh [native|avx512|avx2] [COMMIT]
# avx512 hides AMX from oneDNN; avx2 hides AVX-512 from oneDNN and ATen (no native bf16: the trainer runs fp32).
# Run it alone: a second torch process on a 2-core machine slows both many times over.
set -euo pipefail
setting=${1:-native}
commit=${2:-HEAD}
src=$(git rev-parse --show-toplevel)
dir=$(mktemp -d /tmp/mdm_demo_XXXX)
git clone -q "$src" "$dir/mdm"
git -C "$dir/mdm" checkout -q "$commit"
case $setting in
  native) ;;
  avx512) export ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ;;
  avx2) export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ;;
  *) echo "unknown setting $setting (native, avx512 or avx2)" >&2; exit 2 ;;
esac
export TORCH_EXTENSIONS_DIR="$dir/torch_extensions"
cd "$dir/mdm"
start=$(date +%s)
make demo 2>&1 | tee demo.log
cpu=$(grep -o -w -E 'amx_bf16|avx512_bf16|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')
echo "$setting at $(git rev-parse --short HEAD): make demo took $(( $(date +%s) - start )) s, install included" \
     "(clone: $dir/mdm; CPU flags: $cpu)"
