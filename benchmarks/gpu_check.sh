#!/usr/bin/env bash
# The GPU checks of the exact search and paper scale, as one device run (at most 9½ minutes:
# give it timeout_s 600):
#   1. the CUDA tests (-m gpu): the exact search in the real TF32 / bf16 tensor-core arithmetic
#      against the integer reference and the CPU's fp32 search at PatchCore's size, the memory
#      bank's distances equal in every format, auto keeping the fastest, the smoothed gradient
#      equal to the checkpointed one bit for bit, each detector's CUDA path against its CPU path;
#   2. benchmarks/paper_scale.py at paper settings for PatchCore and PatchGuard: attack step,
#      bank search before/after per format, each smoothed (n = 1,000) before/after, PatchGuard's
#      training step split / joint / bf16, the projections of suites/seeds/patchguard.yaml and
#      suites/full.yaml before/after, and last PatchGuard trained 3 epochs split and joint
#      (time and AUROC of each).
# Logs go to $OUT (the device tool brings them back).
#
# The device machine reaches no package registry. It has torch, timm, scipy, scikit-image and
# the like, but not torchattacks or jsonschema (pyautoattack, 42 MB, is only for impl: official,
# imported on use). Fetch their wheels here once (the .whl/ folder stays out of git):
#   bash benchmarks/gpu_check.sh fetch
# then run there, carrying them:   bash benchmarks/gpu_check.sh      (carry: .whl)
set -uo pipefail
WHEELS=(torchattacks==3.5.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
        referencing==0.37.0 rpds-py==2026.9.1)

if [ "${1:-}" = fetch ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"

# anomalib is not on the device machine: its adapters are left out
timeout 90 python3 -m pytest -q -m gpu -k "not anomalib" -s -p no:cacheprovider tests/unit/adapters 2>&1 | tee "$OUT/gpu-tests.log"
tests=$?
timeout 470 python3 benchmarks/paper_scale.py --detectors patchcore patchguard --steps 10 --batch 16 \
    --patchguard-epochs 3 --cache /tmp/paper-scale 2>&1 | tee "$OUT/paper-scale.log"
scale=$?
echo "gpu tests: exit $tests; paper_scale: exit $scale (124: out of time)" | tee -a "$OUT/device.txt"
[ "$tests" = 0 ] && [ "$scale" = 0 ]
