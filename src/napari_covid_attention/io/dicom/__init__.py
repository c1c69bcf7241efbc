"""DICOM CT reading: series discovery, one-sentence refusals, exact geometry, fast pixels.

Why a reader of its own rather than ``pydicom.dcmread(...).pixel_array`` per file:

* geometry must come from positions (never InstanceNumber or file names), with gantry
  tilt kept as shear and gaps, duplicates and uneven spacing reported to the user;
* every unusable input (MR, RT plans, colour screenshots, broken files...) must end in a
  :class:`CTLoadError` with one sentence, never a traceback;
* loading must be fast: each header is parsed once with the pixel data deferred, the
  output array is allocated once and every slice is read (uncompressed data straight
  from its file offset) or decoded into it by a thread pool, and the HU rescale is done
  in place with integer arithmetic whenever the slope and intercept allow it.

How a load flows through the modules of this package, each with one job:

* :mod:`.headers` reads one file's header once (a fast element walker for the common
  little-endian files, ``pydicom.dcmread`` for the rest), keeping the undecoded values
  of the tags it needs and the file offset of the pixel data;
* :mod:`.slices` turns that into a compact, identifier-free file header and one slice
  per frame (position, orientation, spacing, rescale);
* :mod:`.series` walks a folder or a DICOMDIR, groups slices into series and picks one;
* :mod:`.refusals` says, in one sentence, why a file or series is not a usable CT scan;
* :mod:`.stack` sorts the slices by position along the slice normal, checks the
  spacing (gaps, duplicates, tilt) and builds the affine;
* :mod:`.pixels` reads or decodes every frame into one array and rescales it to HU;
* :mod:`.reader` holds the entry points that tie these together;
* :mod:`.messages` keeps pydicom's warnings, logs and long errors away from the user.

Arrays follow the (z, y, x) / LPS / canonical conventions of
:mod:`napari_covid_attention.io.geometry`.
"""

from napari_covid_attention.io.dicom.headers import is_dicom_file
from napari_covid_attention.io.dicom.reader import list_series, load_dicom, load_series
from napari_covid_attention.io.dicom.series import SeriesInfo

__all__ = ["SeriesInfo", "is_dicom_file", "list_series", "load_dicom", "load_series"]
