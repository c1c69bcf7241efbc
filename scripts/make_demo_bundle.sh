#!/usr/bin/env bash
# Rebuild the built-in demo bundle from scratch: synthetic data -> training -> evaluation.
# Deterministic data (seeds 1, 2, 3 never share cases); training is seeded. About 2-3 hours
# on a 2-core CPU, minutes on a GPU. Usage: bash scripts/make_demo_bundle.sh [work-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/demo}"
bundle=src/napari_covid_attention/bundles/demo

napari-covid-attention synth --n 1000 --seed 1 --out "$work/train" --overwrite
napari-covid-attention synth --n 200 --seed 2 --out "$work/val" --overwrite
napari-covid-attention synth --n 300 --seed 3 --out "$work/test" --overwrite

rm -rf "$bundle"
napari-covid-attention train --demo --name demo --version 1.0.0 \
    --train "$work/train/manifest.csv" --val "$work/val/manifest.csv" --out "$bundle" \
    --sampling dual --q 0 --lesion-head --attention-gain 5 --epochs 12 --segmenter-epochs 4 --seed 0 \
    --cache-dir "$work/cache"

napari-covid-attention evaluate --bundle "$bundle" --manifest "$work/test/manifest.csv" --out docs/demo-model
