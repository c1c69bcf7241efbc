"""``napari-covid-attention`` command line: the same core functions the widgets call."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_covid_attention import __version__
from napari_covid_attention.errors import UserFacingError


def _tqdm_progress(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar, and a function closing it."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="scan", dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _cmd_synth(args: argparse.Namespace) -> int:
    from napari_covid_attention.data.synthetic import write_dataset

    progress, close = _tqdm_progress("synthetic scans")
    try:
        manifest = write_dataset(
            args.out,
            args.n,
            seed=args.seed,
            shape=tuple(args.shape),
            workers=args.workers,
            overwrite=args.overwrite,
            progress=progress,
        )
    finally:
        close()
    print(f"wrote {args.n} synthetic scans; manifest: {manifest}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_covid_attention._demo import run_demo

    summary = run_demo(label=args.label, headless=args.headless, out_dir=args.out)
    if summary is not None:
        print(f"summary: {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-covid-attention",
        description="COVID-19 vs community-acquired pneumonia on chest CT with a dual-sampling "
        "attention network.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="open napari on the built-in sample CT (or write screenshots with --headless)"
    )
    demo.add_argument("--headless", action="store_true", help="no window: write PNG + JSON summary")
    demo.add_argument("--label", choices=("COVID-19", "CAP"), default="COVID-19", help="which sample phantom")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="folder for --headless output")
    demo.set_defaults(func=_cmd_demo)

    synth = sub.add_parser("synth", help="write a synthetic chest CT dataset (NIfTI + manifest.csv)")
    synth.add_argument("--n", type=int, required=True, help="number of scans")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (different seeds never share cases)")
    synth.add_argument("--shape", type=int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    synth.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    synth.set_defaults(func=_cmd_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UserFacingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
