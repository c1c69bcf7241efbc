"""napari-covid-attention: a dual-sampling attention network for COVID-19 vs CAP on chest CT.

The core (``io``, ``preprocess``, ``models``, ``explain``, ``training``, ``annotations``,
``data``, ``diagnosis``) imports neither napari nor Qt; the napari adapters
(``_reader``, ``_writer``, ``_sample_data``, ``widgets``) only translate to layers.
"""

__version__ = "0.1.0"
