#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one CUDA GPU (device time is scarce: one call does a stage).
#   bash benchmarks/gpu_checks.sh first  OUTDIR   # GPU tests, 10-step benchmark (graphs off and on), profile
#   bash benchmarks/gpu_checks.sh second OUTDIR   # 100-step video, 16x512x512 10 steps, full-size verify
# Each command has its own time limit and log in OUTDIR; the tail of each log is echoed. The CLI runs
# through `python -c` so that a machine without simpy or dask (not needed on this path) can run it.
set -u
stage=${1:?"stage: first or second"}
out=${2:?"OUTDIR"}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
cli() { python -c "import sys; from codesign.cli import main; sys.exit(main())" "$@"; }
step() {  # step NAME SECONDS CMD...: run CMD under a time limit into OUTDIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
    tail -n 30 "$out/$name.log"
}
case $stage in
first)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$out/gpu.txt"
    step tests 250 python -m pytest -q -rfE --durations=8 tests/quantmodel/test_gpu.py tests/quantmodel/test_cudafused.py
    step bench10 200 python benchmarks/bench_gpu.py --steps 10 --modes int,fp16 --fused on --graphs both --no-fakequant
    step profile 100 python benchmarks/profile_gpu.py --rows 20
    ;;
second)
    step bench100 250 python benchmarks/bench_gpu.py --steps 100 --modes int --fused on --graphs on --no-fakequant
    step bench512 150 python benchmarks/bench_gpu.py --workload opensora-v1.0-16x512x512 --steps 10 --modes int \
        --fused on --graphs on --no-fakequant
    # full-size verify over a 10-step schedule (calibration covers every step; 100 would not fit the call)
    sed 's/^num_steps: 100$/num_steps: 10/' workloads/presets/opensora-v1.0-16x256x256.yaml >"$out/os256-10.yaml"
    step verify 180 cli verify --workload "$out/os256-10.yaml" --recipe asq-w8a8 --nonlinear int --device cuda \
        --prompts 1 --layers 0,27 --steps 0,9
    ;;
*)
    echo "gpu_checks.sh: stage '$stage' is not one of: first, second" >&2
    exit 2
    ;;
esac
