#!/usr/bin/env bash
# The GPU step-time benchmark (README "Performance"), as one command for a
# machine with JAX and PyTorch but neither Keras nor TensorFlow installed.
#
#   bash benchmarks/gpu_step_time.sh [output folder]
#
# Installs the wheels in .whl/ (keras, namex, optree for that machine's
# Python) unless SKIP_WHEELS=1, then times SGD vs SAMModel (vs the minimal
# Keras-JAX SAM) on synthetic CIFAR-sized batches, bf16 mixed precision,
# batch 128: MODELS (default WRN-28-10 and WRN-16-8) on JAX, then
# TORCH_MODELS (default WRN-16-8) on torch, each torch run only if less than
# DEADLINE_S (default 300) seconds have passed. Each run has its own time
# limit; the JSON of each and a log land in the output folder. BENCH_ARGS
# adds arguments to every run (tiny runs for a check on a CPU).
set -u
start=$(date +%s)
out=${1:-saved_results/benchmarks}
mkdir -p "$out"
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
log="$out/gpu_step_time_log.txt"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    KERAS_BACKEND=jax python3 -c "import jax, keras; print('jax', jax.__version__, \
jax.devices(), 'keras', keras.__version__)"
} 2>&1 | tee -a "$log"

run() {  # run SECONDS BACKEND MODEL
    echo "== $2 $3 (limit $1 s)" | tee -a "$log"
    KERAS_BACKEND=$2 timeout "$1" python3 benchmarks/step_time.py \
        --backend "$2" --model "$3" --mixed-precision bfloat16 \
        --batch-size 128 --output "$out" ${BENCH_ARGS:-} 2>&1 \
        | grep -v "^I0000\|^WARNING: All log" | tee -a "$log"
}

for model in ${MODELS-wrn-28-10 wrn-16-8}; do
    run "${JAX_LIMIT_S:-220}" jax "$model"
done
for model in ${TORCH_MODELS-wrn-16-8}; do
    if [ $(($(date +%s) - start)) -lt "${DEADLINE_S:-300}" ]; then
        run 150 torch "$model"
    fi
done
echo "total $(($(date +%s) - start)) s" | tee -a "$log"
