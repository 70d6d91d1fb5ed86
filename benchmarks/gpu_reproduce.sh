#!/usr/bin/env bash
# Ten GPU minutes, one row: WRN-16-8 on CIFAR-10 trained with SAM and
# with SGD (the paper's recipe as `keras-sam reproduce` runs it: basic
# augmentation, batch 256, SGD with Nesterov momentum 0.9, cosine
# schedule, L2 5e-4, the SGD baseline with twice the epochs; rho 0.05
# fixed, one seed) on JAX with bf16 mixed precision, at the largest epoch
# count that fits the budget, into saved_results/cifar/gpu/ like
# `reproduce` writes, with the published WRN-16-8 figures beside it.
#
#   bash benchmarks/gpu_reproduce.sh DATA_DIR [OUTPUT_DIR]
#
# DATA_DIR holds train.npz and test.npz (the JPEG npz copy of CIFAR-10;
# on a lent GPU machine, carry a copy in the ignored local_data/ and the
# wheels in .whl/). TensorFlow is not needed (the NumPy input pipeline
# runs on JAX); tests/test_gpu_reproduce_script.py runs this script at
# tiny sizes with TensorFlow blocked.
# Environment:
#   BUDGET_S (600): the whole run's wall-time limit;
#   OVERHEAD_S (200): what is not training: start-up, JPEG decoding,
#       compiling, evaluation;
#   IMAGES_PER_S (16500): a WRN-16-8 SAM step's throughput, measured on
#       an H100 (saved_results/benchmarks/, bf16, batch 128);
#   EPOCHS: overrides the epoch count computed from the three above;
#   SKIP_WHEELS=1: do not install the wheels in .whl/ (keras, namex,
#       optree) first;
#   REPRODUCE_ARGS: more arguments for `reproduce` (tiny runs on a CPU).
set -u
start=$(date +%s)
data=${1:?usage: bash benchmarks/gpu_reproduce.sh DATA_DIR [OUTPUT_DIR]}
out=${2:-saved_results/cifar/gpu}
budget=${BUDGET_S:-600}
overhead=${OVERHEAD_S:-200}
rate=${IMAGES_PER_S:-16500}
# Per SAM epoch, the SGD baseline makes two epochs at half the cost: the
# pair costs two SAM epochs of 50,000 images.
epochs=${EPOCHS:-$(python3 -c "
import math
print(max(1, min(200, math.floor(($budget - $overhead) / (2 * 50000 / $rate)))))
")}
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
mkdir -p "$out"
log="$out/gpu_reproduce_log.txt"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
        2>/dev/null || echo "no nvidia-smi"
    echo "budget ${budget} s, overhead ${overhead} s, ${rate} img/s:" \
        "${epochs} SAM epochs, $((2 * epochs)) SGD epochs"
} 2>&1 | tee -a "$log"
left=$((budget - ($(date +%s) - start)))
timeout "$left" python3 -m keras_sam.experiments.cli reproduce \
    --backend jax --dataset cifar10 --model wrn-16-8 --augment basic \
    --epochs "$epochs" --seeds 1 --rho 0.05 --mixed-precision bfloat16 \
    --data-dir "$data" --source npz --output-dir "$out" --verbose 2 \
    ${REPRODUCE_ARGS:-} 2>&1 | grep -v "^I0000\|^WARNING: All log" \
    | tee -a "$log"
status=${PIPESTATUS[0]}
python3 - "$out" "$epochs" <<'EOF'
import json
import pathlib
import sys

out, epochs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
reference = {
    "source": "https://github.com/davda54/sam (README, Experiments)",
    "model": "WRN-16-8",
    "dataset": "cifar10",
    "recipe": "200 epochs, label smoothing, basic augmentation + cutout",
    "test_error_percent": {"SGD": 3.20, "SAM": 2.86, "ASAM": 2.55},
    "this_run": f"{epochs} SAM epochs, {2 * epochs} SGD epochs, basic "
    "augmentation, no label smoothing, rho 0.05, one seed",
}
(out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
EOF
echo "exit ${status}; total $(($(date +%s) - start)) s" | tee -a "$log"
exit "$status"
