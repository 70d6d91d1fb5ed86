#!/usr/bin/env bash
# Copies the compact outputs of run_cpu.sh (CSV/JSON/markdown, no tuner
# state, no checkpoints) from keras_sam_runs/cifar_cpu/ into this folder,
# then regenerates the plot and the table from the CSVs.
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=keras_sam_runs/cifar_cpu
DST=saved_results/cifar
mkdir -p "$DST/sweep" "$DST/reproduce"
cp "$SRC"/sweep/{trials.csv,best.json,sweep_info.json} "$DST/sweep/"
cp "$SRC"/reproduce/{results.csv,rho_selection.csv,rho_selection_best.json,settings.json,run_info.json} \
    "$DST/reproduce/"
python "$DST/make_plots.py"
