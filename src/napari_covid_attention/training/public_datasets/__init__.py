"""Turn a public COVID-19 CT dataset a user already has into a training manifest.

Each layout (see :data:`LAYOUTS`) is a folder structure as the dataset is distributed.
:func:`import_dataset` finds its scans and masks, checks that every scan loads and looks
like Hounsfield units and that every mask lies on its scan's voxel grid, and writes
``out/manifest.csv`` (the format :func:`~napari_covid_attention.training.datasets.read_manifest`
reads) plus ``out/import_summary.json`` (counts, skipped files with reasons, and the
labelling decisions taken); :func:`describe_import` turns that summary into a few lines
for a person, and :func:`detect_layout` recognises a layout from its folders alone.

Why the import decides as it does:

- **Nothing is written into the dataset folder.** Files are referenced where they are;
  only what must change (MetaImage scans, masks with extra labels, windowed volumes) is
  converted, and only into ``out``, which may not lie inside the dataset folder. Converted
  files are staged and moved into place only once every scan has been checked.
- **MosMedData's CT-0 studies are left out.** They show no pneumonia; this project tells
  COVID-19 pneumonia from community-acquired pneumonia (CAP), and such a scan is neither.
- **STOIC2021's RT-PCR-negative patients are not imported as CAP.** A negative test in a
  patient with COVID-19-like symptoms is no diagnosis of CAP (many have no pneumonia at
  all), so only the positives are imported, as COVID-19.
- **COVID-19-CT-Seg's windowed Radiopaedia volumes are refused unless converted.** They
  were windowed to [-1250, 250] HU and rescaled to 0-255, so they are not Hounsfield
  units; ``convert_windowed=True`` maps them back to approximate HU, which cannot recover
  what the window clipped, so it is the user's explicit choice.

None of the public collections holds CAP: they are all COVID-19 (or COVID-negative
without a CAP diagnosis). CAP cases come from the user's own scans through the ``folder``
layout with ``label="CAP"``.

Modules: :mod:`.layouts` recognises layouts and lists their scans, :mod:`.files` finds
files by name, :mod:`.conversion` reads, un-windows and reduces scans and masks, and
:mod:`.run` checks every scan and writes the manifest and summary.
"""

from .layouts import LAYOUTS, detect_layout
from .run import describe_import, import_dataset

__all__ = ["LAYOUTS", "describe_import", "detect_layout", "import_dataset"]
