#!/usr/bin/env bash
# The GPU checks, prepared for a short loan of a GPU machine (the device tool: one H100/H200, ~15 minutes of device
# time in all, no internet, its own python3 with torch + triton but without our pins).
#
#   make device-wheels                       # here, once: wheels of what the GPU image lacks, into .whl/
#   bash scripts/device_check.sh tests       # there (carry .whl): kernel tests on the GPU, Triton compiled for real
#   bash scripts/device_check.sh bench       # there: scan / point-op benchmarks, GPU vs CPU, in one run
#   bash scripts/device_check.sh sara        # there: real-size SD 1.5 SaRA / LoRA / full memory + time, batch 1 and 4
#   bash scripts/device_check.sh all         # tests + bench + sara (~10 min: too long for one 600 s call)
#
# Everything goes to $OUT (the device tool brings it back; ./device_out when unset): log.txt with all output, and
# one JSON per benchmark. Stages are independent, so a failed one does not hide the others; the exit status is
# the number of failed stages.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
failed=0

say() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }
run() {  # run "what" cmd...: log everything, count failures
    local what=$1; shift
    say "$what: $*"
    "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || { say "$what FAILED (exit $rc)"; failed=$((failed + 1)); }
}

setup() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
    if [ -d .whl ]; then  # pure-Python wheels the image lacks (see `make device-wheels`); never reaches a registry
        run "install wheels" "$PY" -m pip install --disable-pip-version-check -q --no-index --no-deps .whl/*.whl
    fi
    run "versions" "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
}

stage_tests() {  # every kernel test, with the GPU-only ones (Triton vs reference on CUDA) no longer skipped
    run "kernel tests" "$PY" -m pytest -q -p no:cacheprovider tests/cuda_ext tests/ops tests/layers/test_mamba.py \
        tests/adapters/test_sara.py -x --timeout 300
}

stage_bench() {
    run "bench scan" "$PY" -m zoo benchmark scan --device all --json "$OUT/scan.json"
    run "bench pointops" "$PY" -m zoo benchmark pointops --device all --json "$OUT/pointops.json"
    run "bench pointramba" "$PY" -m zoo benchmark pointramba --device cuda --json "$OUT/pointramba.json"
}

stage_sara() {  # the issue's measured goal on the GPU; each variant in its own process (CUDA peak allocated)
    for b in 1 4; do
        run "bench sara batch $b" "$PY" -m zoo benchmark sara --device cuda --width 1 --latent 64 --batch "$b" \
            --repeat 3 --json "$OUT/sara_b$b.json"
    done
}

stage=${1:-all}
setup
case "$stage" in
    tests) stage_tests ;;
    bench) stage_bench ;;
    sara) stage_sara ;;
    all) stage_tests; stage_bench; stage_sara ;;
    *) echo "usage: $0 [tests|bench|sara|all]" >&2; exit 2 ;;
esac
say "done: $failed failed stage(s)"
exit "$failed"
