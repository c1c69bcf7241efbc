"""Benchmark: the real 30-slice chest CT retrieved over DICOMweb and diagnosed, against the same
series read from local files.

A local Orthanc (DICOMweb plugin, tests/orthanc.py) holds the series. Per run: *local files*
is ``load_ct`` on the folder; *DICOMweb, cold cache* retrieves the series into an empty
cache (QIDO instance list + one streamed WADO-RS request, files written and fsynced) and
opens it with ``load_ct``; *warm cache* opens the cached copy (no HTTP). Each is followed by
the same ``diagnose`` with the bundle on the CPU. *push* is writing the SEG and SR and
storing them (STOW-RS). Median and best of the runs after a warm-up diagnosis. The server
is on the same machine, so the network is loopback: a hospital network adds its transfer
time (~16 MB for this series) to the cold row only.

    python benchmarks/bench_pacs.py [--bundle demo] [--runs 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import machine  # noqa: E402

SERIES = HERE.parent.parent / "shared" / "data" / "chest-ct-dicom-lung-pet-ct-dx"


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None, help="bundle folder or name (default: the built-in demo)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--series", type=Path, default=SERIES, help="DICOM folder of one CT series")
    args = parser.parse_args()

    import pydicom
    import torch
    from orthanc import orthanc_available, start_orthanc

    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.export import dicom_outputs, read_source_datasets
    from napari_covid_attention.io.load import load_ct
    from napari_covid_attention.jobs import run_to_end
    from napari_covid_attention.models.bundle import load_bundle
    from napari_covid_attention.models.registry import resolve_bundle
    from napari_covid_attention.pacs import PacsClient, SeriesCache

    if not orthanc_available():
        print("Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb).")
        return 1
    if not args.series.is_dir():
        print(f"{args.series} not found (the real series from ../shared/data).")
        return 1
    torch.set_num_threads(args.threads)
    bundle = load_bundle(resolve_bundle(args.bundle))
    first = pydicom.dcmread(sorted(args.series.glob("*.dcm"))[0], stop_before_pixels=True)
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    size_mb = sum(p.stat().st_size for p in args.series.glob("*.dcm")) / 1e6

    with tempfile.TemporaryDirectory() as tmp:
        server = start_orthanc(Path(tmp) / "orthanc")
        try:
            server.upload_folder(args.series)
            diagnose(load_ct(args.series), bundle, "cpu")  # warm-up: first-call costs out of the rows
            times: dict[str, list[tuple[float, float]]] = {"local files": [], "DICOMweb, cold cache": [], "DICOMweb, warm cache": []}
            push_s: list[float] = []
            for run in range(args.runs):
                cache = SeriesCache(Path(tmp) / f"cache{run}")
                client = PacsClient(server.dicomweb_url, cache=cache)
                sources = {
                    "local files": lambda: load_ct(args.series),
                    "DICOMweb, cold cache": lambda c=client: run_to_end(c.retrieve(study, series)),
                    "DICOMweb, warm cache": lambda c=client: run_to_end(c.retrieve(study, series)),
                }
                for name, source in sources.items():
                    volume, fetch = timed(source)
                    result, compute = timed(lambda v=volume: diagnose(v, bundle, "cpu"))
                    times[name].append((fetch, compute))
                folder = client.cached_folder(study, series)

                def push(c=client, f=folder, r=result, out=Path(tmp) / f"out{run}"):
                    paths = dicom_outputs(read_source_datasets(f), r, out, name="diagnosis")
                    c.store([pydicom.dcmread(p) for p in paths], study_uid=study)

                push_s.append(timed(push)[1])
                client.close()
        finally:
            server.stop()

    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} threads; bundle {bundle.name} {bundle.version}")
    print(f"series: {args.series.name}, {first.Rows}x{first.Columns}x30, {size_mb:.1f} MB; {args.runs} runs, median (best)")
    print()
    print("| source | load / retrieve s | diagnose s | total s |")
    print("|---|---|---|---|")
    for name, values in times.items():
        fetch = [f for f, _ in values]
        compute = [c for _, c in values]
        total = [f + c for f, c in values]
        print(f"| {name} | {statistics.median(fetch):.3f} ({min(fetch):.3f}) | {statistics.median(compute):.2f} ({min(compute):.2f}) "
              f"| {statistics.median(total):.2f} ({min(total):.2f}) |")
    print(f"| push: write SEG + SR, STOW-RS | {statistics.median(push_s):.3f} ({min(push_s):.3f}) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
