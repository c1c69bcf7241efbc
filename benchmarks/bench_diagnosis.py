"""Benchmark: open a 512x512x300 DICOM series and run the full diagnosis with a bundle.

Target (DESIGN.md section 5): <= 10 s on a 2-core CPU for load + ensemble + attention +
Grad-CAM + Grad-CAM++ + lung and infection masks; <= 0.5 s on a GPU after load. Prints
the machine, FLOPs of each network pass, wall time per stage (median of the runs after a
warm-up run) and the peak memory of a fresh process doing the work.

    python benchmarks/bench_diagnosis.py [--bundle demo] [--runs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, peak_rss_mb, write_dicom_series  # noqa: E402

SHAPE = (300, 512, 512)


def make_series(folder: Path) -> Path:
    """A COVID-19-like phantom at 0.7 x 0.7 x 1.0 mm, written as 300 DICOM slices."""
    from napari_covid_attention.data.synthetic import generate_phantom

    phantom = generate_phantom(20200422, label="COVID-19", shape=SHAPE)
    volume = phantom.volume
    return write_dicom_series(folder, volume.hu, volume.spacing_mm, volume.origin_mm)


def count_flops(bundle, volume, device: str) -> dict[str, float]:
    """GFLOP of one member's forward + backward (explanations) and the segmenter forward."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_covid_attention.diagnosis import explainer_for
    from napari_covid_attention.models.segmenter import infection_probability
    from napari_covid_attention.preprocess.lung import lung_mask
    from napari_covid_attention.preprocess.pipeline import (
        fixed_shape_grid,
        fixed_spacing_grid,
        lung_box,
        normalize_hu,
        resample_to_grid,
    )

    cfg = bundle.preprocessing
    box = lung_box(lung_mask(volume.hu, volume.spacing_mm), volume.affine, cfg.margin_mm)
    seg_grid = fixed_spacing_grid(box, cfg.segmenter_spacing_mm, volume.affine)
    cls = torch.from_numpy(normalize_hu(resample_to_grid(volume.hu, fixed_shape_grid(box, cfg.classifier_shape, volume.affine)), cfg.hu_window))[None, None].to(device)
    seg = torch.from_numpy(normalize_hu(resample_to_grid(volume.hu, seg_grid), cfg.hu_window))[None, None].to(device)
    member = bundle.members[0].model.to(device)
    with FlopCounterMode(display=False) as counter:
        explainer_for(member).explain(cls)
    classifier = counter.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as counter:
        infection_probability(bundle.segmenter.to(device), seg, cfg.segmenter_roi, bundle.segmenter_config.divisor)
    segmenter = counter.get_total_flops() / 1e9
    return {
        "classifier fwd+bwd (per member)": classifier,
        "segmenter fwd": segmenter,
        "total per diagnosis": classifier * len(bundle.members) + segmenter,
        "classifier grid": "x".join(map(str, cfg.classifier_shape)),
        "segmenter grid": "x".join(map(str, seg_grid.shape)),
    }


def worker(folder: str, bundle_spec: str, runs: int, device: str) -> None:
    """In a fresh process: time load + diagnosis ``runs`` times (after a warm-up), print JSON."""
    import torch

    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.io import load_ct
    from napari_covid_attention.models.bundle import load_bundle
    from napari_covid_attention.models.registry import resolve_bundle

    bundle = load_bundle(resolve_bundle(bundle_spec))
    records = []
    for run in range(runs + 1):
        start = time.perf_counter()
        volume = load_ct(folder)
        loaded = time.perf_counter() - start
        result = diagnose(volume, bundle, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        if run > 0:  # the first run warms caches, allocators and lazy imports
            records.append({"load DICOM": loaded, **{k: v for k, v in result.timings_s.items() if k != "total"}, "total": total})
    flops = count_flops(bundle, volume, device)
    print(json.dumps({"records": records, "peak_mb": peak_rss_mb(), "flops": flops, "device": result.device,
                      "threads": torch.get_num_threads(), "bundle": f"{bundle.name} {bundle.version}",
                      "prediction": result.summary()["probabilities"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="demo")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.bundle, args.runs, args.device)
        return

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = make_series(Path(tmp) / "series")
        print(f"synthetic series: {SHAPE[0]} slices of {SHAPE[1]}x{SHAPE[2]} (made in {time.perf_counter() - started:.0f} s)")
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(folder), "--bundle", args.bundle, "--runs", str(args.runs), "--device", args.device],
            capture_output=True, text=True, check=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"bundle: {result['bundle']}, device: {result['device']} ({result['threads']} torch threads), P: {result['prediction']}")
    print()
    print(f"{'stage':<24}{'median s':>10}{'min s':>10}")
    for stage in result["records"][0]:
        values = [r[stage] for r in result["records"]]
        print(f"{stage:<24}{statistics.median(values):>10.3f}{min(values):>10.3f}")
    print(f"{'peak memory (MB)':<24}{result['peak_mb']:>10.0f}")
    print()
    for name, value in result["flops"].items():
        print(f"{name:<34}{value:>10.2f} GFLOP" if isinstance(value, float) else f"{name:<34}{value:>16}")


if __name__ == "__main__":
    main()
