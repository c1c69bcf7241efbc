"""Voxel-to-patient geometry shared by every reader, writer and map in the core.

Conventions, stated once and kept everywhere in the core:

* arrays are indexed ``(z, y, x)``;
* an ``affine`` is a 4x4 matrix mapping a voxel index ``(z, y, x, 1)`` to patient
  coordinates ``(x, y, z, 1)`` in millimetres in the DICOM **LPS** frame
  (x towards the patient's left, y towards posterior, z towards head);
* scans are stored in the **canonical orientation**: index z runs inferior -> superior,
  y anterior -> posterior, x patient right -> left. An axial slice ``hu[k]`` shown with
  rows down and columns right is then in radiological convention (anterior at the top,
  the patient's left on the viewer's right), whatever the file's own voxel order was.

napari's world axes are the LPS axes in ``(z, y, x)`` order, so for a canonical scan the
layer transform is just ``scale = spacing_mm`` and ``translate = origin``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations as nib_ornt

# Voxel axis (z, y, x) -> LPS output axis (2, 1, 0), each increasing (+1).
CANONICAL_ORNT = np.array([[2, 1], [1, 1], [0, 1]], dtype=float)

# NIfTI stores RAS world coordinates; DICOM and this core use LPS.
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Swaps a (z, y, x) voxel index with the (i, j, k) = (x, y, z) order of NIfTI arrays.
_REVERSE_INDEX = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
)


def spacing_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size along (z, y, x): the lengths of the affine's columns."""
    lengths = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    return tuple(float(v) for v in lengths)  # type: ignore[return-value]


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in millilitres (1 mL = 1000 mm^3), shear-aware."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])) / 1000.0)


def affine_from_nifti(nifti_affine: np.ndarray) -> np.ndarray:
    """Core affine ((z, y, x) -> LPS) from a NIfTI affine ((i, j, k) -> RAS)."""
    return _LPS_FROM_RAS @ np.asarray(nifti_affine, dtype=float) @ _REVERSE_INDEX


def affine_to_nifti(affine: np.ndarray) -> np.ndarray:
    """NIfTI affine ((i, j, k) = (x, y, z) -> RAS) for an array stored (z, y, x)."""
    return _LPS_FROM_RAS @ np.asarray(affine, dtype=float) @ _REVERSE_INDEX


def orientation_of(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation (output axis, direction) of each voxel axis of a core affine."""
    return nib_ornt.io_orientation(np.asarray(affine, dtype=float))


def affine_problem(affine: np.ndarray) -> str | None:
    """Why a core affine cannot place voxels in space (end of a sentence), or None.

    Catches what would otherwise fail deep inside the reorientation (NaN, infinite,
    zero-length or parallel voxel axes, axes of wildly different lengths) or give
    meaningless volumes and distances.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return "its voxel-to-world geometry holds NaN or infinite values"
    lengths = np.linalg.norm(affine[:3, :3], axis=0)
    if lengths.min() <= 0 or lengths.max() / lengths.min() > 1e6:
        return "its voxel-to-world geometry is degenerate (a voxel axis of zero or absurd length)"
    if abs(np.linalg.det(affine[:3, :3])) / np.prod(lengths) < 1e-6:
        return "its voxel-to-world geometry is singular (its voxel axes are not independent)"
    if np.isnan(orientation_of(affine)).any():
        return "its voxel-to-world geometry cannot be oriented"
    return None


def reorient(
    array: np.ndarray, affine: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip ``array`` so its voxel axes follow ``target``; returns (array, affine).

    Only axis permutations and flips are used, so no voxel is interpolated and the
    transform is exactly invertible.
    """
    current = orientation_of(affine)
    transform = nib_ornt.ornt_transform(current, target)
    if np.array_equal(transform, np.array([[0, 1], [1, 1], [2, 1]], dtype=float)):
        return array, np.asarray(affine, dtype=float)
    new_array = nib_ornt.apply_orientation(array, transform)
    new_affine = np.asarray(affine, dtype=float) @ nib_ornt.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(new_array), new_affine


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reorient to the canonical (z: I->S, y: A->P, x: R->L) order.

    Returns the array, its affine and the orientation of the *source* voxel axes
    (what :func:`reorient` needs to put an array on the source's own voxel grid again).
    """
    source_ornt = orientation_of(affine)
    canon, canon_affine = reorient(array, affine, CANONICAL_ORNT)
    return canon, canon_affine, source_ornt


def subgrid_affine(
    affine: np.ndarray, start_index: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """Affine of a grid whose voxel k sits at parent index ``start_index + k * step``.

    Used for crops, zooms and low-resolution maps: every map carries the exact affine
    of its own grid, so it can be drawn over the scan without upsampling.
    """
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(np.asarray(step, dtype=float))
    index_map[:3, 3] = np.asarray(start_index, dtype=float)
    return np.asarray(affine, dtype=float) @ index_map


@dataclass(frozen=True)
class LayerTransform:
    """A core affine split into napari's scale / translate / rotate / shear, world (z, y, x).

    ``rotate`` and ``shear`` are ``None`` for the common axis-aligned case, so layers of
    ordinary scans carry only scale and translate.
    """

    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    rotate: np.ndarray | None = None
    shear: np.ndarray | None = None

    def as_layer_kwargs(self) -> dict:
        kwargs: dict = {"scale": self.scale, "translate": self.translate}
        if self.rotate is not None:
            kwargs["rotate"] = self.rotate
        if self.shear is not None:
            kwargs["shear"] = self.shear
        return kwargs


def layer_transform(affine: np.ndarray, atol: float = 1e-6) -> LayerTransform:
    """napari layer transform (world axes = LPS in (z, y, x) order) for a core affine.

    The linear part M is decomposed as rotate @ shear @ diag(scale) (napari's order) by a
    QR decomposition, with signs chosen so that scale is positive.
    """
    world = _REVERSE_INDEX @ np.asarray(affine, dtype=float)  # rows now (z, y, x) LPS
    linear = world[:3, :3]
    q, r = np.linalg.qr(linear)
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0
    q = q * signs
    r = (r.T * signs).T
    scale = np.diag(r).copy()
    shear = r / scale  # unit upper-triangular (columns scaled)
    translate = tuple(float(v) for v in world[:3, 3])
    rotate = None if np.allclose(q, np.eye(3), atol=atol) else q
    shear_m = None if np.allclose(shear, np.eye(3), atol=atol) else shear
    return LayerTransform(
        scale=tuple(float(v) for v in scale),  # type: ignore[arg-type]
        translate=translate,  # type: ignore[arg-type]
        rotate=rotate,
        shear=shear_m,
    )
