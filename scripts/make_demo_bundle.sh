#!/usr/bin/env bash
# Rebuild the built-in demo bundle from scratch: synthetic data -> training -> evaluation.
# Deterministic data (seeds 1, 2, 3 never share cases); training is seeded. About 2-3 hours
# on a 2-core CPU, minutes on a GPU. Usage: bash scripts/make_demo_bundle.sh [work-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/demo}"
bundle=src/napari_covid_attention/bundles/demo

# The phantoms are a pure function of (n, seed): existing sets are reused.
synth() { [ -f "$3/manifest.csv" ] || napari-covid-attention synth --n "$1" --seed "$2" --out "$3" --overwrite; }
synth 1000 1 "$work/train"
synth 200 2 "$work/val"
synth 300 3 "$work/test"

rm -rf "$bundle"
napari-covid-attention train --demo --name demo --version 1.0.0 \
    --train "$work/train/manifest.csv" --val "$work/val/manifest.csv" --out "$bundle" \
    --sampling dual --q 0 --lesion-head --attention-gain 5 --classifier-shape 40 80 112 --epochs 14 --segmenter-epochs 4 --seed 0 \
    --cache-dir "$work/cache"

napari-covid-attention evaluate --bundle "$bundle" --manifest "$work/test/manifest.csv" --out docs/demo-model
