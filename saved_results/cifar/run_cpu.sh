#!/usr/bin/env bash
# The CPU runs behind saved_results/cifar/ (scaled down: small CNN on
# 4,000 training images of the offline JPEG CIFAR-10 copy, full 10,000-image
# test set). Run from the repository root; about 40 minutes on 2 shared CPU
# cores. Raw outputs (tuner state included) go to keras_sam_runs/cifar_cpu/;
# collect.sh copies the compact files here.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_CPP_MIN_LOG_LEVEL=3 KERAS_BACKEND=tensorflow
DATA=../shared/data/cifar10
OUT=keras_sam_runs/cifar_cpu
mkdir -p "$OUT"

keras-sam sweep --data-dir "$DATA" --model small-cnn --train-size 4000 \
    --epochs 6 --rho 0,0.02,0.05,0.1,0.2 --batch-size 64,256 --seeds 0 \
    --output-dir "$OUT/sweep" --verbose 2

keras-sam reproduce --data-dir "$DATA" --model small-cnn --train-size 4000 \
    --epochs 12 --seeds 3 --rho-grid 0.05,0.1,0.2 --batch-size 128 \
    --output-dir "$OUT/reproduce" --verbose 2
