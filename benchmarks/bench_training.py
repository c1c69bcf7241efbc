"""Training throughput: optimisation steps per second of the classifier and the segmenter.

    python benchmarks/bench_training.py [--device cpu|cuda] [--steps 6] [--precision fp32 bf16]

Times :func:`napari_covid_attention.training.steps.train_steps` (the one step loop every
training and fine-tuning run uses) on random tensors of the demo bundle's shapes: a batch of
8 classifier crops (40 x 80 x 112) with the attention and lesion losses, and one segmenter
lung box (64 x 144 x 192 at 4 x 2 x 2 mm, a typical adult box). The first step (warm-up,
oneDNN/cuDNN kernel choice) is left out of the median. Prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import machine

from napari_covid_attention.models.device import resolve_device
from napari_covid_attention.models.dsanet import DSANet, DSANetConfig
from napari_covid_attention.models.segmenter import build_segmenter
from napari_covid_attention.training.losses import DSALoss, LossConfig, SegmenterLoss
from napari_covid_attention.training.steps import classify, segment, train_steps

CLASSIFIER_SHAPE = (40, 80, 112)
SEGMENTER_BOX = (64, 144, 192)


def classifier_setup(device: torch.device, batch_size: int = 8):
    model = DSANet(DSANetConfig(lesion_head=True, attention_gain=5.0)).to(device)
    batch = {
        "image": torch.randn(batch_size, 1, *CLASSIFIER_SHAPE),
        "label": torch.randint(0, 2, (batch_size,)),
        "infection": (torch.rand(batch_size, 1, *CLASSIFIER_SHAPE) > 0.9).float(),
        "has_mask": torch.ones(batch_size),
        "has_flags": torch.ones(batch_size),
        "lesion_flags": (torch.rand(batch_size, 5) > 0.5).float(),
    }
    return model, batch, DSALoss(LossConfig(attention_kind="dice")).to(device), classify, batch_size


def segmenter_setup(device: torch.device):
    model = build_segmenter().to(device)
    batch = {"image": torch.randn(1, 1, *SEGMENTER_BOX), "label": (torch.rand(1, 1, *SEGMENTER_BOX) > 0.95).float()}
    return model, batch, SegmenterLoss(), segment, 1


def time_steps(setup, device: torch.device, precision: str, steps: int) -> tuple[float, int]:
    """Median seconds per step after one warm-up step, and the batch size."""
    torch.manual_seed(0)
    model, batch, loss, forward, batch_size = setup(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: list[float] = []
    started = time.perf_counter()
    for _ in train_steps(model, optimizer, [batch] * (steps + 1), loss, forward=forward, device=device, phase="bench", total=steps + 1, precision=precision):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - started)
        started = now
    return statistics.median(times[1:]), batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads; device {device}")
    print("| model | precision | s/step (median) | scans/s |")
    print("|---|---|---|---|")
    for name, setup in (("classifier (batch 8, 40x80x112)", classifier_setup), ("segmenter (1 box, 64x144x192)", segmenter_setup)):
        for precision in args.precision:
            seconds, batch_size = time_steps(setup, device, precision, args.steps)
            print(f"| {name} | {precision} | {seconds:.3f} | {batch_size / seconds:.1f} |")


if __name__ == "__main__":
    main()
