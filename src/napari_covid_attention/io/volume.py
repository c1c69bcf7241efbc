"""``CTVolume``: the one in-memory representation of a chest CT scan in the core.

See :mod:`napari_covid_attention.io.geometry` for the (z, y, x) / LPS / canonical
orientation conventions every array and affine here follows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io import geometry

# Scanners pad the area outside the reconstruction circle with values such as -2048 or
# -3024 HU. Anything below this is not tissue and is shown and processed as air.
AIR_HU = -1024


class CTLoadError(UserFacingError, ValueError):
    """A file that cannot be used as a chest CT; the message is one sentence for a user."""


@dataclass(eq=False)
class CTVolume:
    """A CT scan in Hounsfield units with its exact geometry.

    Attributes:
        hu: (z, y, x) array in HU (int16 where the rescale allows it, else float32),
            canonical orientation.
        affine: 4x4 voxel (z, y, x) -> LPS patient mm.
        metadata: de-identified, technical metadata only (never names, IDs, dates).
        source_path: the file or folder it was read from, for display.
        source_ornt: orientation of the source file's voxel axes, so exports can be
            written on the source's own voxel grid.
        warnings: sentences about geometry or data problems the user should know.
    """

    hu: np.ndarray
    affine: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    source_path: str | None = None
    source_ornt: np.ndarray | None = None
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise CTLoadError(f"A CT volume needs 3 dimensions, this one has {self.hu.ndim}.")
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError("affine must be a 4x4 matrix")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm."""
        return geometry.spacing_mm(self.affine)

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """LPS position (x, y, z) in mm of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return geometry.voxel_volume_ml(self.affine)

    @cached_property
    def identity(self) -> str:
        """A stable key for this scan: sha256 of its geometry and pixel data.

        The same scan opened again (from DICOM or from an exported NIfTI with the same
        voxels) gets the same key, which is how corrections are found again. It contains
        no patient identifier.
        """
        digest = hashlib.sha256()
        digest.update(np.asarray(self.hu.shape, dtype=np.int64).tobytes())
        digest.update(np.round(self.affine, 3).astype(np.float64).tobytes())
        digest.update(self.hu.dtype.str.encode())
        digest.update(np.ascontiguousarray(self.hu).tobytes())
        return digest.hexdigest()


def hu_array(values: np.ndarray) -> np.ndarray:
    """Store HU compactly: int16 when the values are whole numbers in range, else float32.

    Values below the air level (scanner padding such as -3024) become air, so windows,
    thresholds and normalisation never see the padding.
    """
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise CTLoadError("The image contains NaN or infinite values.")
        out = values
        rounded_ok = values.size == 0 or (
            np.all(values == np.round(values))
            and values.min() >= np.iinfo(np.int16).min
            and values.max() <= np.iinfo(np.int16).max
        )
        if rounded_ok:
            out = values.astype(np.int16)
        else:
            with np.errstate(over="ignore"):  # refused just below, with a sentence
                out = values.astype(np.float32)
            if not np.isfinite(out).all():  # float64 values beyond float32's range
                raise CTLoadError("The image holds values beyond ±3.4e38, which no CT holds: it is not in Hounsfield units.")
    elif values.dtype == np.int16:
        out = values
    else:
        info = np.iinfo(np.int16)
        if values.size and (values.min() < info.min or values.max() > info.max):
            out = values.astype(np.float32)
        else:
            out = values.astype(np.int16)
    np.maximum(out, AIR_HU, out=out)
    return out


def looks_like_hu(hu: np.ndarray) -> bool:
    """Whether values plausibly are Hounsfield units of a chest CT.

    A chest CT always contains air outside the body and in the lungs (about -1000 HU);
    data windowed and rescaled to 0-255 (as in some public datasets) never does.
    """
    sample = hu[:: max(1, hu.shape[0] // 16), ::4, ::4]
    return bool(np.mean(sample < -800) > 0.02 and sample.max() > 0)
