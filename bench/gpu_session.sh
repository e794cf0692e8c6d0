#!/usr/bin/env bash
# One prepared GPU session (device machine: torch + CUDA preinstalled; diffusers, av, filterpy carried as wheels
# in .whl/). Runs the GPU tests and the GPU benches of bench/README.md, each under its own time limit so one slow
# step cannot eat the lease; every log lands in $OUT (or ./gpu-out). ARCH=tiny SMALL=1 dry-runs it on a CPU.
set -uo pipefail
OUT="${OUT:-gpu-out}"; mkdir -p "$OUT"
ARCH="${ARCH:-sd15}"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "${SKIP_WHEELS:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site || exit 1
fi
# the package is imported as ppmtrack from the repository root (no install there)
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/ppmtrack && export PYTHONPATH="/tmp/pkg:${PYTHONPATH:-}"
step() {  # step NAME SECONDS COMMAND...
    local name=$1 secs=$2; shift 2
    echo "=== $name (limit ${secs}s) $(date +%T)" | tee -a "$OUT/steps.log"
    local t0=$SECONDS
    timeout -k 5 "$secs" "$@" > "$OUT/$name.log" 2>&1
    echo "=== $name rc=$? in $((SECONDS - t0))s" | tee -a "$OUT/steps.log"
    tail -n 40 "$OUT/$name.log"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c "import torch, diffusers, av; print(torch.__version__, torch.version.cuda, diffusers.__version__, av.__version__, torch.cuda.is_available())"; } 2>&1 | tee "$OUT/machine.log"
if [ "${SMALL:-0}" = 1 ]; then F=8; B=4; BS=1,4; KP=4; R=1; else F=64; B=16; BS=1,2,4,8,16,32; KP=20; R=5; fi
step gpu_tests "${T_TESTS:-170}" python3 -m pytest -q -m gpu tests/test_speed.py tests/test_batch.py -p no:cacheprovider
step inference_eager "${T_INF1:-130}" python3 bench/bench_inference.py --arch "$ARCH" --keypoints $KP --frames $F --batch-size $B \
    --batch-sizes $BS --variants eager,kv-cache,default,channels-last,cuda-graphs,float16,bfloat16,tiny-vae,reuse-2,reuse-4 --encoder untrained --repeats $R --no-video
step inference_compile "${T_INF2:-170}" python3 bench/bench_inference.py --arch "$ARCH" --keypoints $KP --frames $F --batch-size $B --batch-sizes '' \
    --variants default,compile,compile+cuda-graphs,all --encoder untrained --dtype bfloat16 --repeats $R --no-video
step pipeline "${T_PIPE:-60}" python3 bench/bench_pipeline.py --arch "$ARCH" --keypoints $KP --batch-size $B --encoder untrained --cuda-graphs --no-video --repeats 2 --live-frames 0
step live "${T_LIVE:-50}" python3 bench/bench_pipeline.py --arch "$ARCH" --keypoints $KP --batch-size 1 --cuda-graphs --live-frames 100 --repeats 1 --no-video --stop 16
echo "done $(date +%T)" | tee -a "$OUT/steps.log"
