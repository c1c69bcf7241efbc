"""npe2 sample data: synthetic chest CT phantoms (deterministic, no download)."""

from __future__ import annotations

from napari_covid_attention._layer_data import LayerData, ct_layer_data
from napari_covid_attention.data.synthetic import SAMPLE_SHAPE, generate_phantom

# Fixed seeds: every user and every test sees the same sample scans.
SAMPLE_SEEDS = {"COVID-19": 20200422, "CAP": 20200410}


def sample_phantom(label: str):
    """The phantom behind a sample (also used by the demo command and tests)."""
    return generate_phantom(SAMPLE_SEEDS[label], label=label, shape=SAMPLE_SHAPE)


def make_covid_sample() -> list[LayerData]:
    """Synthetic chest CT with COVID-19-like lesions (bilateral peripheral ground glass)."""
    return [ct_layer_data(sample_phantom("COVID-19").volume, "sample CT (COVID-19-like phantom)")]


def make_cap_sample() -> list[LayerData]:
    """Synthetic chest CT with CAP-like lesions (lobar consolidation, air bronchograms)."""
    return [ct_layer_data(sample_phantom("CAP").volume, "sample CT (CAP-like phantom)")]
