"""Lung mask from HU by classical image processing: 0 background, 1 right lung, 2 left lung.

Why classical: the mask bounds where the networks look and where infection may be
predicted, so it must work on any chest CT without trained weights, and fast (it runs in
every diagnosis). The steps, on a copy pooled to about 2.5 mm (``_WORK_SPACING_MM``):

1. air = HU below ``LUNG_AIR_HU``; air reached from the in-plane image border in its own
   axial slice is outside the body (never the top or bottom slice: scans are often cut
   through the lungs there); the body is the largest remaining 3D piece (drops the table);
2. trachea and main bronchi are tracked down from the top of the scan, slice by slice, as
   small air spots near the midline, until they open into a lung, and removed;
3. the lungs are chosen on the air eroded by one voxel (where gas under the diaphragm no
   longer touches a lung): the largest piece plus, if it lies on one side only, the
   largest piece on the other side that reaches as high as the first one's middle
   (stomach and bowel gas never do); a piece spanning both sides is split by eroding it
   until it falls apart into a right and a left core, giving each voxel to the nearer
   core; the chosen cores grow back over their air;
4. each lung is bridged along z (vertical lines, and lines tilted along the costal pleura
   that only widen a lesion the vertical ones found, see :func:`_bridge`), closed per
   axial slice with a disk of ``_CLOSING_RADIUS_MM`` and its holes filled, so vessels,
   nodules and lesions against the pleura count as lung (infection is predicted inside
   this mask: what it leaves out is lost);
5. on the full grid the mask is upsampled and, in a one-voxel band around its air/tissue
   boundary, the full-resolution threshold decides, so the edge is crisp.

Known limits: a consolidation wider than the disk that reaches the chest wall and has no
aerated lung above and below it (typically a consolidated lower lobe down to the
diaphragm) is not recovered: nothing in HU tells it from the chest wall or the liver.
Nor is a mass against the mediastinum wider than the disk. Of a 2-3 cm consolidation
against the costal pleura with aerated lung above and below, 97-99 % is inside the mask
on the real test scans; what is left out is a 1-3 mm rim where the pleura bulges
outwards (between ribs, or a convex wall), which no line from the lung above to the lung
below crosses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.morphology import disk

from napari_covid_attention.errors import UserFacingError
from napari_covid_attention.io.volume import CTVolume

RIGHT_LUNG, LEFT_LUNG = 1, 2

# Halfway between aerated lung (about -850 HU) and soft tissue (about +40): pixels half lung,
# half pleura go either way, the edge sits where it is seen, noise has a wide margin, most
# ground glass (-700 to -450) counts as air, and fat (-100) never does. Denser lesions are
# taken in by the filling steps, not by the threshold.
LUNG_AIR_HU = -400

_WORK_SPACING_MM = 2.5  # pooled grid: still shows the trachea; ~2 M voxels for a chest
_MIN_LUNG_ML = 150.0  # a child's lung; larger than any sinus, ear or bowel gas pocket
_SECOND_LUNG_SHARE = 0.05  # the smaller lung's air vs the larger's: consolidated, not gone
_SIDE_SHARE = 0.15  # share of a component on each side of the midline to try a split
_CLOSING_RADIUS_MM = 12.0  # juxtapleural nodules and subpleural lesions up to ~2.5 cm deep
_BRIDGE_Z_MM = 40.0  # lesions up to this tall, with aerated lung above and below
_BRIDGE_TILTS = (0.2, 0.4, 0.6, 0.8)  # tilted bridging lines: mm along y or x per mm of z
_BRIDGE_DEEP_MM = 5.0  # a tilted gap must reach this far (each axis) from any lung
_BONE_HU = 300.0  # ribs, sternum, spine: tilted bridging never adds them
_AIRWAY_AREA_MM2 = (5.0, 500.0)  # trachea / main bronchus lumen, one pixel eroded
_AIRWAY_MIDLINE_MM = 25.0  # the trachea's distance from the body's midline, at most
_AIRWAY_GAP_MM = 12.0  # how far down the tracking looks past a slice without the airway
_AIRWAY_SEED_DEPTH_MM = 40.0  # how far below the top of the scan to look for the trachea

# Neighbourhoods: within one axial slice only (4-connected), and 3D face-connected.
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[1] = ndimage.generate_binary_structure(2, 1)
_FACES = ndimage.generate_binary_structure(3, 1)


class NoLungsFoundError(UserFacingError, ValueError):
    """The scan has no plausible lungs (not a chest CT, or not in HU)."""


_NO_LUNGS = "No lungs were found in this scan; it does not look like a chest CT"


def lung_mask_of(volume: CTVolume) -> np.ndarray:
    """:func:`lung_mask` of a :class:`CTVolume` on its own grid."""
    return lung_mask(volume.hu, volume.spacing_mm)


def lung_mask(hu: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """(z, y, x) uint8 mask on the scan's grid: 0 background, 1 right lung, 2 left lung.

    ``hu`` is a canonical (z: inferior -> superior, y: anterior -> posterior, x: patient
    right -> left) scan in HU; ``spacing_mm`` its voxel size (z, y, x). The right lung is
    the one at small x. Raises :class:`NoLungsFoundError` when there are no lungs.
    """
    if hu.ndim != 3 or len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"expected a (z, y, x) volume and 3 positive spacings, got {hu.shape}, {spacing_mm}")
    air = hu < LUNG_AIR_HU  # scanner padding (-2048, -3024) is below it too: air
    factors = _pool_factors(spacing_mm)
    spacing = tuple(float(s) * f for s, f in zip(spacing_mm, factors, strict=True))
    air_low = _pool_majority(air, factors)
    body = _body(air_low)
    if not body.any():
        raise NoLungsFoundError(_NO_LUNGS + " (no body was found in the image).")
    midline = _midline_x(body)
    candidates = air_low & body
    candidates &= ~_central_airways(candidates, midline, spacing)
    lungs = _pick_lungs(candidates, midline, spacing)
    lungs = _fill_lungs(lungs, spacing, lambda blocks: _bony_blocks(hu, factors, blocks))
    return _refine(lungs, air_low, air, factors)


def _pool_factors(spacing_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """Integer pooling factor per axis that brings each voxel size near the working spacing."""
    return tuple(max(1, int(round(_WORK_SPACING_MM / float(s)))) for s in spacing_mm)  # type: ignore[return-value]


def _pool_majority(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Block majority vote of a boolean volume (blocks of ``factors``; a partial last block counts).

    Summing strided views is several times faster than ``reshape(...).sum`` or
    ``np.add.reduceat`` on this size, and this is one of the few full-resolution passes.
    """
    counts = mask.view(np.uint8)
    dtype = np.uint8 if np.prod(factors) < 256 else np.uint16
    votes = np.ones(1, dtype=dtype)
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        n_low = -(-counts.shape[axis] // f)
        shape = list(counts.shape)
        shape[axis] = n_low
        total = np.zeros(shape, dtype=dtype)
        for offset in range(f):
            part = _strided(counts, axis, offset, f)
            target = [slice(None)] * 3
            target[axis] = slice(0, part.shape[axis])
            total[tuple(target)] += part
        counts = total
        n_votes = np.full(n_low, f, dtype=dtype)
        n_votes[-1] = mask.shape[axis] - f * (n_low - 1)
        votes = votes * n_votes.reshape([-1 if a == axis else 1 for a in range(3)])
    return counts > votes // 2  # more than half; never overflows the small dtype


def _strided(array: np.ndarray, axis: int, offset: int, step: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(offset, None, step)
    return array[tuple(index)]


def _body(air: np.ndarray) -> np.ndarray:
    """The patient: what outside air does not reach in its own slice, largest 3D piece.

    Outside air is found per axial slice (components touching the in-plane border) so that
    lungs cut by the top or bottom of the scan are not mistaken for outside air; keeping the
    largest 3D piece drops the table and anything else not touching the patient.
    """
    pieces, count = ndimage.label(air, structure=_INPLANE)
    border = np.concatenate(
        [pieces[:, 0].ravel(), pieces[:, -1].ravel(), pieces[:, :, 0].ravel(), pieces[:, :, -1].ravel()]
    )
    outside = np.zeros(count + 1, dtype=bool)
    outside[border] = True
    outside[0] = False
    return _largest(~outside[pieces])


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of ``mask`` (all False when it is empty)."""
    pieces, count = ndimage.label(mask, structure=_FACES)
    if count == 0:
        return mask
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    sizes[0] = 0
    return pieces == int(np.argmax(sizes))


def _midline_x(body: np.ndarray) -> float:
    """x index of the body's centre: right of it is the patient's right side (small x)."""
    profile = body.sum(axis=(0, 1), dtype=np.int64)
    return float(np.dot(profile, np.arange(profile.size)) / profile.sum())


def _component_means(pieces: np.ndarray, count: int, axis: int) -> np.ndarray:
    """Mean index along ``axis`` of each labelled component (index 0 = background).

    ``ndimage.center_of_mass`` does the same one component at a time; one weighted
    bincount does all of them in a single pass.
    """
    shape = [1, 1, 1]
    shape[axis] = pieces.shape[axis]
    coords = np.broadcast_to(np.arange(pieces.shape[axis], dtype=np.float32).reshape(shape), pieces.shape)
    flat = pieces.ravel()
    sums = np.bincount(flat, weights=coords.ravel(), minlength=count + 1)
    return sums / np.maximum(np.bincount(flat, minlength=count + 1), 1)


def _central_airways(candidates: np.ndarray, midline: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Trachea and main bronchi: air spots tracked down from the top until they join a lung.

    The trachea is the small air spot near the midline in the top slices; following it
    down slice by slice (a spot below that overlaps it and is still small is airway too)
    stops where a bronchus opens into a lung's large air region. Without this the airways
    join both lungs into one piece and add non-lung air to the mask. The tracking runs on
    the air eroded by one pixel in-plane: the wall between trachea and lung (the right
    paratracheal stripe, 2-4 mm) is often thinner than a pooled pixel.
    """
    core = ndimage.binary_erosion(candidates, _INPLANE)
    airway = np.zeros_like(candidates)
    pieces, count = ndimage.label(core, structure=_INPLANE)
    if count == 0:
        return airway
    area = np.bincount(pieces.ravel(), minlength=count + 1) * (spacing[1] * spacing[2])
    small = (area >= _AIRWAY_AREA_MM2[0]) & (area <= _AIRWAY_AREA_MM2[1])
    small[0] = False
    near_midline = np.abs(_component_means(pieces, count, 2) - midline) * spacing[2] <= _AIRWAY_MIDLINE_MM
    seeds = small & near_midline

    top = int(np.flatnonzero(core.any(axis=(1, 2)))[-1])
    depth = max(1, int(round(_AIRWAY_SEED_DEPTH_MM / spacing[0])))
    for z in range(top, max(top - depth, -1), -1):
        current = np.unique(pieces[z][seeds[pieces[z]]])
        if current.size:
            break
    else:
        return airway

    # A bronchus running obliquely moves sideways between thick slices: allow for it. The
    # trachea may touch a lung for a slice or two (partial volume): look past those slices
    # and cut its own footprint out of them.
    reach = disk(max(1, int(round(0.5 * spacing[0] / spacing[2]))))
    max_gap = max(2, int(round(_AIRWAY_GAP_MM / spacing[0])))
    while current.size:
        airway[z] = np.isin(pieces[z], current)
        footprint = ndimage.binary_dilation(airway[z], reach)
        current, below = _airway_below(pieces, small, footprint, z, max_gap)
        airway[below + 1 : z] = footprint & core[below + 1 : z]
        z = below
    return ndimage.binary_dilation(airway, _INPLANE) & candidates


def _airway_below(
    pieces: np.ndarray, small: np.ndarray, footprint: np.ndarray, z: int, max_gap: int
) -> tuple[np.ndarray, int]:
    """The small air spots under ``footprint`` in the nearest of the next ``max_gap`` slices
    down that has any, and that slice; none (and ``z``) where the airway has ended."""
    for below in range(z - 1, max(z - 1 - max_gap, -1), -1):
        under = pieces[below][footprint]
        found = np.unique(under[small[under]])
        if found.size:
            return found, below
    return np.empty(0, dtype=pieces.dtype), z


def _pick_lungs(candidates: np.ndarray, midline: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Label the right (1) and left (2) lung among the air components inside the body.

    The choice is made on the air eroded by one voxel, where a lung no longer touches gas
    under the diaphragm (stomach, colon) through a wall thinner than a voxel. The chosen
    cores then grow back over the air they reach, except the air around cores that lie
    low (below the middle of the largest lung) and were not chosen: that gas.
    """
    _require_enough_air(candidates, spacing)
    cores = ndimage.binary_erosion(candidates, _FACES, border_value=1)
    pieces, count = ndimage.label(cores, structure=_FACES)
    if count == 0:
        raise NoLungsFoundError(_NO_LUNGS + " (the air inside the body is only in thin slivers).")
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    sizes[0] = 0
    side = np.where(_component_means(pieces, count, 2) < midline, RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
    tops = np.array([-1] + [box[0].stop - 1 for box in ndimage.find_objects(pieces)])
    first = int(np.argmax(sizes))
    middle = _component_means(pieces, count, 0)[first]

    core_lungs = _split_lungs(pieces == first, midline, spacing)
    if core_lungs is None:
        core_lungs = (pieces == first).astype(np.uint8) * side[first]
        for other in np.argsort(sizes)[::-1][1:]:
            if sizes[other] < _SECOND_LUNG_SHARE * sizes[first]:
                break
            # The other lung reaches up beside the first; gas under the diaphragm does not.
            if side[other] != side[first] and tops[other] >= middle:
                core_lungs[pieces == other] = side[other]
                break
    low = tops < middle
    low[0] = False
    gas = ndimage.binary_dilation(low[pieces] & (core_lungs == 0), _FACES)
    return _grow_back(candidates & ~gas, core_lungs, spacing)


def _require_enough_air(candidates: np.ndarray, spacing: tuple[float, ...]) -> None:
    """Refuse scans whose largest air space inside the body is too small to be a lung."""
    pieces, count = ndimage.label(candidates, structure=_FACES)
    if count == 0:
        raise NoLungsFoundError(_NO_LUNGS + " (there is no air inside the body).")
    largest_ml = np.bincount(pieces.ravel())[1:].max() * float(np.prod(spacing)) / 1000.0
    if largest_ml < _MIN_LUNG_ML:
        raise NoLungsFoundError(
            _NO_LUNGS + f" (the largest air space inside the body holds only {largest_ml:.0f} mL)."
        )


def _split_lungs(joined: np.ndarray, midline: float, spacing: tuple[float, ...]) -> np.ndarray | None:
    """Split one air component into a right and a left lung, or None if it is one lung.

    Only a component with a fair share on both sides of the midline is tried. It is eroded
    (its distance to the surface thresholded) step by step until it falls apart into a
    large core on each side, then every voxel goes to the nearest core: the cut follows
    the thin junction where the lungs touch.
    """
    right_share = np.count_nonzero(joined[..., : int(np.ceil(midline))]) / np.count_nonzero(joined)
    if min(right_share, 1.0 - right_share) < _SIDE_SHARE:
        return None
    box = ndimage.find_objects(joined.astype(np.uint8))[0]
    sub = joined[box]
    depth = ndimage.distance_transform_edt(sub, sampling=spacing)
    step = min(spacing[1], spacing[2])
    for radius in np.arange(step, depth.max(), step):
        cores, count = ndimage.label(depth > radius, structure=_FACES)
        if count < 2:
            continue
        sizes = np.bincount(cores.ravel(), minlength=count + 1)
        sizes[0] = 0
        side = np.where(_component_means(cores, count, 2) + box[2].start < midline, RIGHT_LUNG, LEFT_LUNG)
        side = side.astype(np.uint8)
        side[0] = 0
        largest = [sizes[side == s].max(initial=0) for s in (RIGHT_LUNG, LEFT_LUNG)]
        if min(largest) < _SECOND_LUNG_SHARE * max(largest):
            continue
        lungs = np.zeros(joined.shape, dtype=np.uint8)
        lungs[box] = _nearest_label(side[cores], sub, spacing)
        return lungs
    return None


def _grow_back(allowed: np.ndarray, core_lungs: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Each lung is the allowed air connected to its core; air reached from both cores
    (lungs touching at a junction) goes to the nearer core."""
    pieces, count = ndimage.label(allowed | (core_lungs > 0), structure=_FACES)
    # Label bits: RIGHT_LUNG | LEFT_LUNG (= 3) marks a piece reached from both cores.
    owner = np.zeros(count + 1, dtype=np.uint8)
    for label in (RIGHT_LUNG, LEFT_LUNG):
        owner[np.unique(pieces[core_lungs == label])] |= label
    owner[0] = 0
    lungs = owner[pieces]
    shared = lungs == RIGHT_LUNG | LEFT_LUNG
    if shared.any():
        box = ndimage.find_objects(shared.astype(np.uint8))[0]
        lungs[box][shared[box]] = _nearest_label(core_lungs[box], shared[box], spacing)[shared[box]]
    return lungs


def _nearest_label(markers: np.ndarray, region: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """The label of the nearest marker voxel, for every voxel of ``region`` (0 elsewhere)."""
    nearest = ndimage.distance_transform_edt(markers == 0, sampling=spacing, return_distances=False, return_indices=True)
    return markers[tuple(nearest)] * region


def _fill_lungs(lungs: np.ndarray, spacing: tuple[float, ...], is_bone: BlockTest) -> np.ndarray:
    """Add what lies inside each lung but is not air: vessels, nodules, lesions.

    Per lung: bridge tissue between lung above and below it (:func:`_bridge`), close each
    axial slice with a disk (``_CLOSING_RADIUS_MM``) and fill the slice's holes. The
    bridge catches lesions against the chest wall that are too wide for the disk but have
    aerated lung above and below; it never fills under the diaphragm's dome or the heart,
    which have no lung below them. Each lung is done on its own so nothing bridges the
    mediastinum; where the two results overlap, a voxel keeps its own label or gets none.
    ``is_bone`` says which pooled blocks (rows of indices) are mostly bone.
    """
    hulls = _SliceHulls(lungs > 0)
    filled = [_fill_one(lungs == label, spacing, hulls, is_bone) for label in (RIGHT_LUNG, LEFT_LUNG)]
    out = np.zeros_like(lungs)
    out[filled[0]] = RIGHT_LUNG
    out[filled[1]] = LEFT_LUNG
    both = filled[0] & filled[1]
    out[both] = lungs[both]
    return out


def _fill_one(mask: np.ndarray, spacing: tuple[float, ...], hulls: _SliceHulls, is_bone: BlockTest) -> np.ndarray:
    """:func:`_fill_lungs` for one lung, worked on its bounding box plus the disk's reach."""
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes:
        return mask
    ry = int(np.ceil(_CLOSING_RADIUS_MM / spacing[1]))
    rx = int(np.ceil(_CLOSING_RADIUS_MM / spacing[2]))
    box = _grow_box(boxes[0], (0, ry, rx), mask.shape)
    lung = _bridge(mask[box], spacing, hulls, is_bone, box)

    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    disk_2d = ((yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= _CLOSING_RADIUS_MM**2)[None]
    # Beyond the box counts as lung here, so the box edge does not erode the lung.
    lung = ndimage.binary_erosion(ndimage.binary_dilation(lung, disk_2d), disk_2d, border_value=1)

    out = np.zeros_like(mask)
    out[box] = ndimage.binary_fill_holes(lung, structure=_INPLANE)
    return out


def _bridge(
    lung: np.ndarray, spacing: tuple[float, ...], hulls: _SliceHulls, is_bone: BlockTest, box: tuple[slice, ...]
) -> np.ndarray:
    """``lung`` (a lung's box) plus the tissue it bridges along z: lesions with aerated lung
    above and below them.

    Vertically, any gap up to ``_BRIDGE_Z_MM`` between lung above and lung below is filled
    (a closing with a vertical line). The costal pleura is rarely vertical, though: beside
    a consolidation against the chest wall, the lung above and below lies a few mm further
    in, so vertical lines leave a strip along the wall (up to 25 % of a 2-3 cm lesion on real
    scans). Lines tilted by ``_BRIDGE_TILTS`` along y and x recover it, but on their own
    they also cut across every natural concavity of the lung's surface: the mediastinum's
    bulges (aortic arch, heart), the diaphragm's slopes, the chest wall's bends (2-7 % of
    the lung volume in tissue, fat and rib on the real scans). What a tilted line adds is
    therefore kept only if all of these hold:

    - its gap is deep: it passes a voxel with no lung within ``_BRIDGE_DEEP_MM`` along
      each axis (a lesion, not a shallow concavity);
    - it lies on the costal side: outside the convex hull of both lungs' air in its axial
      slice (the mediastinum and the diaphragm's dome lie inside);
    - it is not bone (``is_bone``: a rib, the sternum, the spine);
    - its connected piece touches deep tissue the vertical lines bridged, i.e. it widens a
      lesion found with lung straight above and below it.

    On healthy scans it then adds nothing (under 0.5 mL a scan).
    """
    reach = max(1, int(round(_BRIDGE_Z_MM / 2 / spacing[0])))
    vertical = _close_along_lines(lung, spacing, [(0.0, 0.0)], reach)
    directions = [d for t in _BRIDGE_TILTS for d in ((t, 0.0), (-t, 0.0), (0.0, t), (0.0, -t))]
    if not directions:
        return vertical
    size = [2 * int(_BRIDGE_DEEP_MM // s) + 1 for s in spacing]
    deep = ndimage.maximum_filter(lung.view(np.uint8), size=size, mode="constant", cval=0) == 0
    # Lesions the vertical lines found on the costal side (at most 1.5 voxels inside the
    # hull): only around them can a tilted piece be kept, so only there are lines tilted.
    core = vertical & ~lung & deep
    voxels = np.argwhere(core)
    costal = _beyond_hull(hulls, voxels, tuple(s.start for s in box), -1.5)
    if not costal.any():
        return vertical
    # A line's gap holding a voxel spans at most 2 * reach slices each way from it.
    shift = int(np.ceil(2 * reach * spacing[0] * max(_BRIDGE_TILTS) / min(spacing[1:]))) + 1
    low = np.maximum(voxels[costal].min(axis=0) - (2 * reach, shift, shift), 0)
    high = np.minimum(voxels[costal].max(axis=0) + (2 * reach, shift, shift) + 1, lung.shape)
    near = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    tilted = _close_along_lines(lung[near], spacing, directions, reach, deep[near]) & ~vertical[near]
    voxels = np.argwhere(tilted)
    corner = tuple(s.start + n.start for s, n in zip(box, near, strict=True))
    outside = _beyond_hull(hulls, voxels, corner, 0.5) & ~is_bone(voxels + corner)
    tilted[tuple(voxels[~outside].T)] = False
    pieces, _ = ndimage.label(tilted, structure=_FACES)
    keep = np.unique(pieces[ndimage.binary_dilation(core[near], _FACES) & tilted])
    out = vertical.copy()
    out[near] |= np.isin(pieces, keep[keep > 0])
    return out


def _beyond_hull(hulls: _SliceHulls, voxels: np.ndarray, corner: tuple[int, ...], margin: float) -> np.ndarray:
    """Whether each voxel (rows (z, y, x) counted from ``corner`` of the pooled grid) lies
    more than ``margin`` voxels outside the convex hull of both lungs in its axial slice."""
    out = np.zeros(len(voxels), dtype=bool)
    origin = np.array(corner)
    for z in np.unique(voxels[:, 0]):
        rows = voxels[:, 0] == z
        out[rows] = hulls.beyond(z + origin[0], voxels[rows, 1:] + origin[1:], margin)
    return out


BlockTest = Callable[[np.ndarray], np.ndarray]


def _bony_blocks(hu: np.ndarray, factors: tuple[int, int, int], blocks: np.ndarray) -> np.ndarray:
    """Whether most full-grid voxels of each pooled block (rows of ``blocks``) are bone."""
    index = [
        np.minimum(blocks[:, axis, None] * f + np.arange(f), n - 1)
        for axis, (f, n) in enumerate(zip(factors, hu.shape, strict=True))
    ]
    values = hu[index[0][:, :, None, None], index[1][:, None, :, None], index[2][:, None, None, :]]
    return np.count_nonzero(values >= _BONE_HU, axis=(1, 2, 3)) * 2 > np.prod(factors)


class _SliceHulls:
    """Per axial slice, the convex hull of a mask (both lungs), computed when first asked."""

    def __init__(self, mask: np.ndarray) -> None:
        self._mask = mask
        self._equations: dict[int, np.ndarray | None] = {}

    def beyond(self, z: int, points: np.ndarray, margin: float) -> np.ndarray:
        """Whether each point (rows (y, x)) of slice z lies more than ``margin`` voxels
        outside the hull (every point does where the slice has no hull)."""
        if z not in self._equations:
            self._equations[z] = self._hull(self._mask[z])
        equations = self._equations[z]
        if equations is None:
            return np.ones(len(points), dtype=bool)
        return (points @ equations[:, :2].T + equations[:, 2]).max(axis=1) > margin

    @staticmethod
    def _hull(plane: np.ndarray) -> np.ndarray | None:
        rows = np.flatnonzero(plane.any(axis=1))
        if rows.size < 2:
            return None
        # The hull of each row's first and last pixel is the hull of all of them.
        first = plane[rows].argmax(axis=1)
        last = plane.shape[1] - 1 - plane[rows, ::-1].argmax(axis=1)
        points = np.concatenate([np.stack([rows, first], axis=1), np.stack([rows, last], axis=1)])
        try:
            return ConvexHull(points).equations  # rows (normal y, normal x, offset); inside <= 0
        except QhullError:  # all points on one line: no area
            return None


def _close_along_lines(
    lung: np.ndarray,
    spacing: tuple[float, ...],
    directions: list[tuple[float, float]],
    reach: int,
    deep: np.ndarray | None = None,
) -> np.ndarray:
    """``lung`` plus the gaps it closes along lines: the union over ``directions`` (y and x
    shift per mm of z; each tilted along y or x only) of a closing with a line of
    ``2 * reach + 1`` slices. With ``deep``, a tilted line's gap is filled only if it holds
    a ``deep`` voxel. Beyond the array counts as not lung, so nothing is bridged at a cut end.

    Each direction is sheared into a vertical line, so the closing is a running OR then a
    running AND along z; those run on bits packed eight voxels a byte across the other
    in-plane axis: about 1 ms for the vertical direction on a lung's box, where
    ``binary_dilation`` and ``binary_erosion`` with a 17-slice line took about 30 ms.
    """
    nz = lung.shape[0]
    size = 2 * reach + 1
    z_mm = np.arange(nz) * spacing[0]
    packed, packed_deep, closed_any = {}, {}, {}
    for ty, tx in directions:
        if ty != 0 and tx != 0:
            raise ValueError("a bridging line is tilted along y or along x, not both")
        shear_axis, tilt = (2, tx) if tx != 0 else (1, ty)
        pack_axis = 3 - shear_axis
        if pack_axis not in packed:
            packed[pack_axis] = np.packbits(lung, axis=pack_axis)
            closed_any[pack_axis] = np.zeros_like(packed[pack_axis])
            if deep is not None:
                packed_deep[pack_axis] = np.packbits(deep, axis=pack_axis)
        source = packed[pack_axis]
        shift = np.round(z_mm * tilt / spacing[shear_axis]).astype(int)
        shift -= shift.min()
        sheared = _shear(source, shift, shear_axis)
        closed = _running(_running(sheared, size, np.bitwise_or), size, np.bitwise_and)
        if deep is not None and shift.any():
            gap = closed & ~sheared
            closed = _runs_holding(gap, gap & _shear(packed_deep[pack_axis], shift, shear_axis))
        _unshear_into(closed_any[pack_axis], closed, shift, shear_axis)
    out = lung.copy()
    for pack_axis, bits in closed_any.items():
        out |= np.unpackbits(bits, axis=pack_axis, count=lung.shape[pack_axis]).view(bool)
    return out


def _shear(array: np.ndarray, shift: np.ndarray, axis: int) -> np.ndarray:
    """Slice z of ``array`` moved by ``shift[z]`` along ``axis`` (1 or 2), zeros around."""
    if not shift.any():
        return array
    n = array.shape[axis]
    shape = list(array.shape)
    shape[axis] = n + int(shift.max())
    out = np.zeros(shape, dtype=array.dtype)
    for z, s in enumerate(shift):
        target = (z, slice(s, s + n)) if axis == 1 else (z, slice(None), slice(s, s + n))
        out[target] = array[z]
    return out


def _unshear_into(out: np.ndarray, sheared: np.ndarray, shift: np.ndarray, axis: int) -> None:
    """OR the inverse of :func:`_shear` of ``sheared`` into ``out``."""
    if not shift.any():
        out |= sheared
        return
    n = out.shape[axis]
    for z, s in enumerate(shift):
        source = (z, slice(s, s + n)) if axis == 1 else (z, slice(None), slice(s, s + n))
        out[z] |= sheared[source]


def _running(bits: np.ndarray, size: int, combine: np.ufunc) -> np.ndarray:
    """``combine`` (bitwise OR or AND) of ``bits`` over the ``size`` (odd) slices centred on
    each slice along axis 0; beyond both ends counts as zeros. Windows of 1, 2, 4, ...
    slices are built by doubling, then ``size`` is assembled from them."""
    half = size // 2
    nz = bits.shape[0]
    padded = np.zeros((nz + 2 * half, *bits.shape[1:]), dtype=bits.dtype)
    padded[half : half + nz] = bits
    windows = [padded]  # windows[k][i]: combine of padded[i : i + 2**k]; zeros past the end
    while 2 ** len(windows) <= size:
        prev, step = windows[-1], 2 ** (len(windows) - 1)
        nxt = np.zeros_like(prev)
        nxt[:-step] = combine(prev[:-step], prev[step:])
        if combine is np.bitwise_or:
            nxt[-step:] = prev[-step:]
        windows.append(nxt)
    out, offset = None, 0
    for level in range(len(windows) - 1, -1, -1):
        if size - offset >= 2**level:
            part = windows[level][offset : offset + nz]
            out = part.copy() if out is None else combine(out, part)
            offset += 2**level
    return out


def _runs_holding(gap: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The runs of ``gap`` along axis 0 (consecutive set bits of one column) holding a
    ``seed`` bit: one pass along axis 0 and one back, carrying each bit through its run."""
    held = np.empty_like(gap)
    carry = seed[0]
    held[0] = carry
    for z in range(1, gap.shape[0]):
        carry = gap[z] & (carry | seed[z])
        held[z] = carry
    for z in range(gap.shape[0] - 2, -1, -1):
        carry = gap[z] & (carry | held[z])
        held[z] = carry
    return held


def _grow_box(box: tuple[slice, ...], margin: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin, shape, strict=True)
    )


def _refine(lungs: np.ndarray, air_low: np.ndarray, air: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Put the pooled mask on the full grid with a crisp edge where the edge is air/tissue.

    In a one-voxel band around the pooled mask's boundary, air at full resolution next to
    a lung is that lung. Tissue there is not, except near tissue the mask deliberately
    includes (lesions, vessels filled in): that edge has no HU step to follow, so it is
    drawn where the linearly interpolated pooled mask crosses one half, not in blocks.
    Only the band's blocks are touched voxel by voxel, which keeps this fast.
    """
    if factors == (1, 1, 1):
        return lungs
    out = np.zeros(air.shape, dtype=np.uint8)
    box = _grow_box(ndimage.find_objects((lungs > 0).astype(np.uint8))[0], (1, 1, 1), lungs.shape)
    _upsample_into(out, lungs, box, factors)

    labels = lungs[box]
    lung = labels > 0
    band = ndimage.binary_dilation(lung, _FACES) & ~ndimage.binary_erosion(lung, _FACES, border_value=1)
    filled_edge = ndimage.binary_dilation(lung & ~air_low[box], _FACES)
    nearest = np.where(lung, labels, ndimage.maximum_filter(labels, size=3))
    blocks = np.argwhere(band)
    flat, low_coords = _block_voxels(blocks, box, factors, air.shape)
    inside = air.reshape(-1)[flat]
    smooth = filled_edge[tuple(blocks.T)]
    if smooth.any():
        halfway = ndimage.map_coordinates(lung.astype(np.float32), low_coords[:, smooth], order=1, mode="nearest")
        inside[smooth] |= halfway >= 0.5
    out.reshape(-1)[flat] = nearest[tuple(blocks.T)][:, None, None, None] * inside
    return out


def _block_voxels(
    blocks: np.ndarray, box: tuple[slice, ...], factors: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Full-grid flat indices (n, fz, fy, fx) of pooled ``blocks`` (indices within ``box``),
    and each voxel's centre in the box's pooled coordinates, (3, n, fz, fy, fx).

    A partial last block at the grid's end repeats its own last voxel.
    """
    index, centre = [], []
    for axis, (f, n) in enumerate(zip(factors, shape, strict=True)):
        full = (blocks[:, axis, None] + box[axis].start) * f + np.arange(f)
        index.append(np.minimum(full, n - 1))
        centre.append((index[-1] + 0.5) / f - 0.5 - box[axis].start)
    flat = (index[0][:, :, None, None] * shape[1] + index[1][:, None, :, None]) * shape[2] + index[2][:, None, None, :]
    grids = np.broadcast_arrays(centre[0][:, :, None, None], centre[1][:, None, :, None], centre[2][:, None, None, :])
    return flat, np.stack(grids)


def _upsample_into(out: np.ndarray, labels: np.ndarray, box: tuple[slice, ...], factors: tuple[int, int, int]) -> None:
    """Nearest-neighbour upsampling of ``labels[box]`` into its place on ``out``'s grid.

    ``np.repeat`` in-plane, then one broadcast write along z: several times faster than
    ``np.take`` or a 6D broadcast, whose innermost loops are only a few voxels long.
    A last block cut short by the grid's end is filled from its own pooled voxel.
    """
    fz, fy, fx = factors
    plane = labels[box].repeat(fy, axis=1).repeat(fx, axis=2)
    y0, x0 = box[1].start * fy, box[2].start * fx
    y1, x1 = min(y0 + plane.shape[1], out.shape[1]), min(x0 + plane.shape[2], out.shape[2])
    plane = plane[:, : y1 - y0, : x1 - x0]
    z0, z1 = box[0].start * fz, min(box[0].stop * fz, out.shape[0])
    whole = (z1 - z0) // fz
    target = out[z0 : z0 + whole * fz, y0:y1, x0:x1]
    target.reshape(whole, fz, *target.shape[1:])[...] = plane[:whole, None]
    if z0 + whole * fz < z1:
        out[z0 + whole * fz : z1, y0:y1, x0:x1] = plane[whole]
