"""Merge manifests into one (e.g. phantoms at several grids for the demo bundle).

    python scripts/merge_manifests.py OUT.csv IN1.csv IN2.csv ...
"""

from __future__ import annotations

import sys

from napari_covid_attention.training.datasets import merge_manifests

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(merge_manifests(sys.argv[2:], sys.argv[1]))
