"""Shared fixtures: real data from ../shared/data (skipped when absent) and small helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVID_ATTENTION_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
CHEST_SERIES = SHARED_DATA / "chest-ct-dicom-lung-pet-ct-dx"
ODD_CORPUS = SHARED_DATA / "dicom-odd-corpus"
REAL_CT = SHARED_DATA / "real-chest-ct"


def pytest_collection_modifyitems(config, items):
    """Viewer tests need an X server (pytest-xvfb starts Xvfb when it is installed);
    without one they are skipped with the fix, instead of Qt aborting the whole run."""
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="needs a display: install Xvfb (apt-get install xvfb)")
    for item in items:
        if "viewer" in item.keywords or "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_user_data(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own user data folder: tests never touch the real bundles,
    annotation store or settings of the person running them."""
    home = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv("NAPARI_COVID_ATTENTION_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def chest_series_dir() -> Path:
    """The real 30-slice chest CT DICOM series; skips the test when the data is absent."""
    if not CHEST_SERIES.is_dir():
        pytest.skip(f"real chest CT series not found at {CHEST_SERIES}")
    return CHEST_SERIES


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    """The four real full-coverage chest CT volumes (no pneumonia); skips when absent."""
    if not REAL_CT.is_dir():
        pytest.skip(f"real chest CT volumes not found at {REAL_CT}")
    return REAL_CT


@pytest.fixture(scope="session")
def odd_corpus_dir() -> Path:
    """pydicom's corpus of odd DICOM files; skips the test when the data is absent."""
    if not ODD_CORPUS.is_dir():
        pytest.skip(f"DICOM odd corpus not found at {ODD_CORPUS}")
    return ODD_CORPUS


TINY_SHAPE = (32, 64, 64)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """12 small synthetic scans with masks and a manifest (deterministic)."""
    from napari_covid_attention.data.synthetic import write_dataset

    out = tmp_path_factory.mktemp("tiny-dataset")
    return write_dataset(out, 12, seed=7, shape=TINY_SHAPE, workers=1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A bundle with the real architecture at toy size and untrained (seeded) weights.

    Enough to exercise every code path of diagnosis, the CLI and the viewer in seconds.
    """
    import torch

    from napari_covid_attention.models.bundle import DEMO_LABEL, Member, save_bundle
    from napari_covid_attention.models.dsanet import DSANet, DSANetConfig
    from napari_covid_attention.models.segmenter import SegmenterConfig, build_segmenter
    from napari_covid_attention.preprocess.pipeline import PreprocessConfig

    torch.manual_seed(0)
    classifier = DSANetConfig(widths=(4, 8, 8, 16), lesion_head=True)
    segmenter = SegmenterConfig(channels=(4, 8, 16), strides=(2, 2))
    members = [
        Member("uniform", "uniform", 0.5, DSANet(classifier).eval()),
        Member("size_balanced", "size_balanced", 0.5, DSANet(classifier).eval()),
    ]
    return save_bundle(
        tmp_path_factory.mktemp("bundles") / "tiny",
        name="tiny-test",
        version="0.0.1",
        label=DEMO_LABEL,
        class_names=("COVID-19", "CAP"),
        preprocessing=PreprocessConfig(
            classifier_shape=(16, 32, 32), segmenter_spacing_mm=(8.0, 4.0, 4.0), segmenter_roi=(32, 64, 64)
        ),
        members=members,
        segmenter=build_segmenter(segmenter).eval(),
        segmenter_config=segmenter,
    )


def tiny_train_args(train_manifest: Path, out: Path) -> list[str]:
    """CLI arguments for a seconds-long training run at toy size."""
    return [
        "train", "--train", str(train_manifest), "--out", str(out), "--epochs", "1", "--segmenter-epochs", "1",
        "--classifier-shape", "16", "32", "32", "--segmenter-spacing", "8", "4", "4",
        "--segmenter-roi", "32", "64", "64",
        "--widths", "4", "8", "8", "16", "--segmenter-channels", "4", "8", "16",
        "--lesion-head", "--batch-size", "4", "--workers", "1", "--val-fraction", "0.34", "--device", "cpu",
    ]


@pytest.fixture
def open_ct_with_diagnose_widget(make_napari_viewer):
    """Opens a volume as layer "ct" in a new viewer with the diagnose widget set to a bundle, on the CPU."""

    def open_(volume, bundle):
        from napari_covid_attention._layer_data import ct_layer_data

        viewer = make_napari_viewer()
        data, kwargs, _ = ct_layer_data(volume, "ct")
        viewer.add_image(data, **kwargs)
        _, widget = viewer.window.add_plugin_dock_widget("napari-covid-attention", "COVID-19 attention")
        widget.set_bundle(bundle)
        widget.set_device("cpu")
        return viewer, widget

    return open_


@pytest.fixture(scope="session")
def cap_phantom():
    """A small CAP phantom (32 x 64 x 64) for the viewer-logic tests."""
    from napari_covid_attention.data.synthetic import generate_phantom

    return generate_phantom(5, label="CAP", shape=(32, 64, 64))


@pytest.fixture(scope="session")
def cap_diagnosis(cap_phantom, tiny_bundle):
    """The tiny bundle's diagnosis of :func:`cap_phantom`."""
    from napari_covid_attention.diagnosis import diagnose
    from napari_covid_attention.models.bundle import load_bundle

    return diagnose(cap_phantom.volume, load_bundle(tiny_bundle), "cpu")
