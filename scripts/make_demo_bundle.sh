#!/usr/bin/env bash
# Rebuild the built-in demo bundle from scratch: synthetic data -> training -> evaluation.
# Deterministic data (no two sets share a seed, so no case is in two sets); training is
# seeded. Four stages (a stage whose bundle exists in the work folder is skipped):
#   1. version 1.0.0: 1000 phantoms at 64 x 128 x 128 (87 min on 2 CPU cores);
#   2. version 1.1.0: warm start from 1.0.0 on phantoms at three grids (64 x 128 x 128,
#      96 x 192 x 192, 120 x 256 x 256), because a classifier that has seen one grid only
#      misreads finer scans (docs/demo-model.md), with the attention loss as a Dice loss
#      (85 min);
#   3. version 1.2.0: 6 more classifier epochs from 1.1.0, whose members were still
#      improving; the segmenter is kept (44 min);
#   4. version 1.3.0: 6 epochs from 1.2.0 at half the learning rate, on crops framed by the
#      lung mask computed from HU (as diagnosis frames them), each member Platt-calibrated
#      on validation (25 min);
#   5. version 2.1.0, the shipped bundle: real anatomy. Synthetic lesions are inserted into
#      the five real chest CTs of ../shared/data (no pneumonia; 30 cases each, 30 % left
#      healthy), the segmenter is trained from 1.3.0's on them plus phantoms (8 epochs in
#      bf16: 9 min on 2 CPU cores with AMX), the pneumonia threshold is chosen on
#      validation, and the members are re-calibrated; then leave-one-patient-out
#      cross-validation of the same recipe (docs/real-scans.md).
# Minutes on a GPU. Usage: bash scripts/make_demo_bundle.sh [work-folder] [shared-data-folder]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-runs/demo}"
shared="${2:-../shared/data}"
bundle=src/napari_covid_attention/bundles/demo
common=(--name demo --sampling dual --q 0 --lesion-head --attention-gain 5 --classifier-shape 40 80 112 --cache-dir "$work/cache")

# The phantoms are a pure function of (n, seed, shape): existing sets are reused.
synth() { [ -f "$4/manifest.csv" ] || napari-covid-attention synth --n "$1" --seed "$2" --shape $3 --out "$4" --overwrite; }
synth 1000 1 "64 128 128" "$work/train"
synth 200 2 "64 128 128" "$work/val"
synth 300 3 "64 128 128" "$work/test"
synth 300 11 "96 192 192" "$work/train96"
synth 250 12 "120 256 256" "$work/train120"
synth 60 21 "96 192 192" "$work/val96"
synth 60 22 "120 256 256" "$work/val120"
synth 100 31 "96 192 192" "$work/test96"
synth 100 32 "120 256 256" "$work/test120"
merge() { python scripts/merge_manifests.py "$work/$1-mixed.csv" "$work/$1/manifest.csv" "$work/${1}96/manifest.csv" "$work/${1}120/manifest.csv"; }
merge train && merge val && merge test

# Stage 1: one grid.
[ -f "$work/demo-1.0.0/bundle.json" ] || napari-covid-attention train "${common[@]}" --demo --version 1.0.0 \
    --train "$work/train/manifest.csv" --val "$work/val/manifest.csv" --out "$work/demo-1.0.0" \
    --epochs 14 --segmenter-epochs 4 --seed 0

# Stage 2: three grids, warm start, gentler steps.
[ -f "$work/demo-1.1.0/bundle.json" ] || napari-covid-attention train "${common[@]}" --demo --version 1.1.0 \
    --init "$work/demo-1.0.0" --train "$work/train-mixed.csv" --val "$work/val-mixed.csv" --out "$work/demo-1.1.0" \
    --attention-loss dice --epochs 5 --lr 3e-4 --segmenter-epochs 1 --segmenter-lr 5e-4 --seed 1

# Stage 3: more classifier epochs; --segmenter-epochs 0 keeps 1.1.0's segmenter.
[ -f "$work/demo-1.2.0/bundle.json" ] || napari-covid-attention train "${common[@]}" --demo --version 1.2.0 \
    --init "$work/demo-1.1.0" --train "$work/train-mixed.csv" --val "$work/val-mixed.csv" --out "$work/demo-1.2.0" \
    --attention-loss dice --epochs 6 --lr 3e-4 --segmenter-epochs 0 --seed 2

# Stage 4: half the learning rate; calibration is fitted by every run.
[ -f "$work/demo-1.3.0/bundle.json" ] || napari-covid-attention train "${common[@]}" --demo --version 1.3.0 --init "$work/demo-1.2.0" \
    --train "$work/train-mixed.csv" --val "$work/val-mixed.csv" --out "$work/demo-1.3.0" \
    --attention-loss dice --epochs 6 --lr 1.5e-4 --segmenter-epochs 0 --seed 3

# Stage 5, the shipped bundle: lesions inserted into real chest CT (never committed: read
# from the shared data folder), 60 phantoms of the stage-1 training set kept in the mix.
real="$shared/real-chest-ct"
[ -f "$work/inserted/manifest.csv" ] || napari-covid-attention insert-lesions \
    "$real/lidc-idri-0001.nii.gz" "$real/lidc-idri-0002.nii.gz" "$real/lidc-idri-0003.nii.gz" \
    "$real/lung-dx-a0001.nii.gz" "$shared/chest-ct-dicom-lung-pet-ct-dx" \
    --annotations "$real/annotations" --n-per-host 30 --healthy-share 0.3 --seed 7 --out "$work/inserted"
synth 60 1 "64 128 128" "$work/phantoms60"
python scripts/merge_manifests.py "$work/real-mixed.csv" "$work/inserted/manifest.csv" "$work/phantoms60/manifest.csv"
stage5=(--attention-loss dice --label "demo model — trained on synthetic phantoms and on synthetic lesions inserted into 5 public real chest CTs, not for clinical use" --init "$work/demo-1.3.0" --train "$work/real-mixed.csv" --val-fraction 0.2 --epochs 0
        --segmenter-epochs 8 --segmenter-lr 1e-3 --segmenter-negative-weight 3 --precision bf16 --seed 5 --data-sources scripts/demo-data-sources.json)
rm -rf "$bundle"
napari-covid-attention train "${common[@]}" "${stage5[@]}" --version 2.1.0 --out "$bundle"

# Leave one patient out: fold i never sees patient i (its test.csv), not even to choose
# epochs or the pneumonia threshold; the phantoms (no patient) are in every training fold.
# The shipped bundle's recipe exactly.
[ -f "$work/lopo/cv.json" ] || napari-covid-attention train "${common[@]}" "${stage5[@]}" --version 2.1.0 \
    --folds 5 --fold-by patient --out "$work/lopo"
for fold in 1 2 3 4 5; do
    napari-covid-attention evaluate --bundle "$work/lopo/fold-$fold/bundle" --manifest "$work/lopo/fold-$fold/test.csv" \
        --out "$work/lopo/fold-$fold/report" --bootstrap 0
done
python scripts/real_scan_report.py --lopo "$work/lopo" --bundle "$bundle" --shared "$shared" --out docs/real-scans

napari-covid-attention evaluate --bundle "$bundle" --manifest "$work/test-mixed.csv" --out docs/demo-model
