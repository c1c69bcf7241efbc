"""Say when a scan is outside what the model knows.

A network gives an answer for any array it is fed, with the same confidence whether or
not the scan resembles its training data. The scans it was made for are whole-chest CT
in Hounsfield units, with slices at most 5 mm apart and diagnostic-dose noise; a bundle
trained only on synthetic phantoms has never seen a real patient. When a scan falls
outside that, the class, the maps and the infection volume can be wrong without any sign
of it in the result, so :func:`scan_warnings` says so in one plain sentence per problem,
including what it means for the result. It only reads the scan and the lung mask the
diagnosis computed (no Qt, no model), reads a subsample (some 20-40 ms on a 512x512x300
scan) and never raises: a check that has nothing to measure says nothing.
"""

from __future__ import annotations

import math

import numpy as np

from napari_covid_attention.io.volume import CTVolume

# Slices further apart than this average lesions of a few mm away with their neighbours
# (partial volume) or fall between slices; the models are made for scans up to 5 mm (the
# demo trains on 4.7 mm phantoms, the real Lung-PET-CT-Dx NIfTI scan is 5.0 mm).
MAX_SLICE_MM = 5.0
# Header rounding (5.0000001, 5.02 mm) must not turn a 5 mm scan into a thick-slice one.
SLICE_TOLERANCE_MM = 0.05

# An end slice whose lung area is at least this fraction of the largest slice's cuts
# through the lungs. Apices and bases taper over the last centimetres (the real scans reach
# 20 % of the largest area 1.5-2 cm below the apex and 2.5-5 cm above the lowest base, and
# what lies beyond is 1-2 % of the lung volume); the phantoms' blunter apices put up to 15 %
# in their top lung slice. Lower, a scan ending just at the apex would be called cut.
CUT_LUNG_FRACTION = 0.20

# Air is about -1000 HU. Values at or below -1024 are scanner padding outside the
# reconstruction circle (-2048, -3024, which the loaders clamp to -1024) or air clipped by
# the scanner, so they say nothing about the calibration; a chest CT in HU always has air
# just above -1024 (trachea, lungs: 12-46 % of the in-field voxels of the real scans and
# phantoms lie in (-1024, -900]).
PADDING_MAX_HU = -1024
AIR_MAX_HU = -900
# Fewer in-field voxels than this in (-1024, -900] HU: there is no air, so not HU.
MIN_AIR_FRACTION = 0.005
# Every value within 0..255: an 8-bit screenshot or a windowed/normalised export.
EIGHT_BIT_RANGE = (0.0, 255.0)
# Lungs whose median is below this are darker than air can make them: the air sits below
# -1000 HU and the loaders' clamp at -1024 swallows it, so the check above cannot see it.
# Aerated lung is about -850 HU (medians -790 to -878 on the real scans, -809 to -852 on
# phantoms), even severe emphysema stays above about -930, infection only makes it brighter.
MIN_LUNG_MEDIAN_HU = -960

# Noise = the robust SD of in-plane neighbour differences inside the lungs, divided by
# sqrt(2) so that it equals the SD for white noise (anatomy changes little from one voxel
# to the next and the median ignores vessel edges). Measured with this code: 15-18 HU on
# the three GE standard-kernel LIDC scans and the Siemens B40f DICOM series, 51 HU on the
# Philips lung-kernel (sharp) 5 mm Lung-PET-CT-Dx scan, 19-27 HU on phantoms at their
# usual 10-25 HU noise, 51 / 76 / 101 HU on phantoms given 60 / 100 / 150 HU of (smoothed)
# noise. Above 70 HU a scan is noisier than any diagnostic scan at hand, with a 35 % margin
# over the sharp-kernel one: a low-dose or otherwise very noisy scan.
MAX_NOISE_HU = 70.0
NOISE_SLICES = 8  # the slices with the largest lung area; ample for a median
NOISE_STEP = 2  # every 2nd row (column) for the x (y) differences: half the work, same median
MIN_NOISE_SAMPLES = 1000  # fewer neighbour pairs in the lungs: no estimate
# Slices read for the lung-area profile and the HU sample (plus the two end slices).
PROFILE_SLICES = 48
HU_SAMPLE_SLICES = 16
HU_SAMPLE_STEP = 4  # every 4th row and column: 16 x fewer voxels, same histogram

PHANTOM_FORMAT = "synthetic phantom"  # CTVolume.metadata["format"] of generated phantoms


def scan_warnings(volume: CTVolume, lung_mask: np.ndarray, *, bundle_trained_on_real_scans: bool) -> list[str]:
    """One sentence per way ``volume`` differs from what the model was made for.

    ``lung_mask`` is the (z, y, x) lung mask on the scan's grid (0 background, 1 right,
    2 left lung; z from inferior to superior); one of another shape is ignored, and so are
    the checks that need it. Checks, in this order: values not in HU (no air, an 8-bit
    range, lungs darker than air), a phantom-only bundle on a real scan, lungs cut at the
    apices or bases, slices thicker than :data:`MAX_SLICE_MM`, noise above
    :data:`MAX_NOISE_HU` (not judged when the values are not HU).
    """
    hu = np.asarray(volume.hu)
    mask = np.asarray(lung_mask)
    if mask.shape != hu.shape:
        mask = np.zeros((0, 0, 0), dtype=bool)
    profile = _lung_area_profile(mask)
    warnings: list[str] = []
    hu_problem = _hu_problem(hu) or _dark_lungs(hu, mask, profile)
    if hu_problem:
        warnings.append(hu_problem)
    if not bundle_trained_on_real_scans and (volume.metadata or {}).get("format") != PHANTOM_FORMAT:
        warnings.append(
            "This model was trained only on synthetic phantoms and this is a real scan: "
            "its class, maps and infection volume are a demonstration, not a diagnosis."
        )
    cut = _cut_ends(profile)
    if cut:
        warnings.append(cut)
    thick = _thick_slices(volume)
    if thick:
        warnings.append(thick)
    if not hu_problem:
        noise = estimate_noise_hu(hu, mask, profile)
        if noise is not None and noise > MAX_NOISE_HU:
            warnings.append(
                f"The image is unusually noisy (about {noise:.0f} HU of noise in the lungs, where diagnostic "
                "scans have about 15-50 HU), as in a low-dose scan: the model may mistake noise for "
                "ground glass or miss faint lesions, so treat the result with caution."
            )
    return warnings


def estimate_noise_hu(
    hu: np.ndarray, lung_mask: np.ndarray, profile: tuple[np.ndarray, np.ndarray] | None = None
) -> float | None:
    """Image noise in HU inside the lungs, or None when too little lung to measure.

    The robust SD (1.4826 x median absolute deviation) of the differences between
    in-plane neighbours that are both in the lungs and above the padding level, divided by
    sqrt(2), on the :data:`NOISE_SLICES` slices with the most lung. ``profile`` is
    ``(slice indices, lung areas)`` when already computed.
    """
    hu = np.asarray(hu)
    lung_mask = np.asarray(lung_mask)
    if hu.ndim != 3 or lung_mask.shape != hu.shape or hu.size == 0:
        return None
    diffs = []
    for z in _most_lung_slices(lung_mask, profile):
        in_lung = lung_mask[z] > 0
        rows = np.flatnonzero(in_lung.any(axis=1))
        cols = np.flatnonzero(in_lung.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        values = hu[z][box].astype(np.float32)
        usable = in_lung[box] & np.isfinite(values) & (values > PADDING_MAX_HU)
        # Differences along x on every NOISE_STEP-th row, along y on every NOISE_STEP-th column.
        rows_x, cols_y = values[::NOISE_STEP], values[:, ::NOISE_STEP]
        ok_x, ok_y = usable[::NOISE_STEP], usable[:, ::NOISE_STEP]
        diffs.append((rows_x[:, 1:] - rows_x[:, :-1])[ok_x[:, 1:] & ok_x[:, :-1]])
        diffs.append((cols_y[1:] - cols_y[:-1])[ok_y[1:] & ok_y[:-1]])
    d = np.concatenate(diffs) if diffs else np.zeros(0, dtype=np.float32)
    if d.size < MIN_NOISE_SAMPLES:
        return None
    # A neighbour difference is symmetric about 0 (either order), so its median is 0.
    return 1.4826 * float(np.median(np.abs(d))) / math.sqrt(2.0)


def _most_lung_slices(mask: np.ndarray, profile: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The :data:`NOISE_SLICES` profiled slices with the most lung (none without lung), in order."""
    slices, areas = _lung_area_profile(mask) if profile is None else profile
    order = np.argsort(areas, kind="stable")[::-1][:NOISE_SLICES]
    return np.sort(slices[order][areas[order] > 0])


def _dark_lungs(hu: np.ndarray, mask: np.ndarray, profile: tuple[np.ndarray, np.ndarray]) -> str | None:
    """A sentence when the lungs are darker than air can be (air below -1000 HU: not HU)."""
    if mask.shape != hu.shape or hu.size == 0:
        return None
    values = [hu[z][mask[z] > 0][::NOISE_STEP] for z in _most_lung_slices(mask, profile)]
    lung = np.concatenate(values).astype(np.float32) if values else np.zeros(0, dtype=np.float32)
    lung = lung[np.isfinite(lung)]
    if lung.size < MIN_NOISE_SAMPLES or np.median(lung) >= MIN_LUNG_MEDIAN_HU:
        return None
    return (
        f"The lungs measure about {np.median(lung):.0f} HU, darker than air (-1000 HU) can make them: the "
        "values are probably not Hounsfield units (a wrong rescale), and the lung and lesion densities the "
        "model relies on are wrong, so the result cannot be trusted."
    )


def _hu_problem(hu: np.ndarray) -> str | None:
    """A sentence when the values are not Hounsfield units (no air, or an 8-bit range)."""
    if hu.size == 0:
        return None
    zs = _even_slices(hu.shape[0], HU_SAMPLE_SLICES)
    sample = hu[zs][:, ::HU_SAMPLE_STEP, ::HU_SAMPLE_STEP].astype(np.float32, copy=False).ravel()
    sample = sample[np.isfinite(sample)]
    in_field = sample[sample > PADDING_MAX_HU]
    consequence = "the lung and lesion densities the model relies on are wrong, so the result cannot be trusted."
    if in_field.size and in_field.min() >= EIGHT_BIT_RANGE[0] and in_field.max() <= EIGHT_BIT_RANGE[1]:
        return (
            f"The image values run from {in_field.min():.3g} to {in_field.max():.3g}, like an 8-bit screenshot or "
            f"a windowed or normalised export, not Hounsfield units (air should be about -1000 HU): {consequence}"
        )
    air = np.count_nonzero(in_field <= AIR_MAX_HU)
    if in_field.size == 0 or air < MIN_AIR_FRACTION * in_field.size:
        return (
            f"Almost nothing in the image is between {PADDING_MAX_HU} and {AIR_MAX_HU} HU, where the air in the "
            "airways and lungs should be (about -1000 HU): the values are probably not Hounsfield units "
            f"(a missing or wrong rescale), and {consequence}"
        )
    return None


def _lung_area_profile(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slice indices, lung voxels per slice) on about :data:`PROFILE_SLICES` slices, both ends included."""
    if mask.ndim != 3 or mask.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.int64)
    zs = _even_slices(mask.shape[0], PROFILE_SLICES)
    areas = np.array([np.count_nonzero(mask[z]) for z in zs], dtype=np.int64)
    return zs, areas


def _cut_ends(profile: tuple[np.ndarray, np.ndarray]) -> str | None:
    """A sentence when the first (bases) or last (apices) slice still holds much lung."""
    zs, areas = profile
    if areas.size == 0 or areas.max() <= 0:
        return None
    largest = float(areas.max())
    bases = areas[0] / largest >= CUT_LUNG_FRACTION  # z runs inferior -> superior
    apices = areas[-1] / largest >= CUT_LUNG_FRACTION
    consequence = (
        "infection there is not seen, so the lung and infection volumes are too small and the class "
        "rests on part of the lungs."
    )
    if bases and apices:
        return f"The lungs are cut off at both the top (apices) and the bottom (bases) of the scan: {consequence}"
    if bases:
        return (
            f"The lung bases are cut off at the bottom of the scan (its lowest slice still shows "
            f"{100 * areas[0] / largest:.0f} % of the largest lung cross-section): {consequence}"
        )
    if apices:
        return (
            f"The lung apices are cut off at the top of the scan (its highest slice still shows "
            f"{100 * areas[-1] / largest:.0f} % of the largest lung cross-section): {consequence}"
        )
    return None


def _thick_slices(volume: CTVolume) -> str | None:
    """A sentence when slices are further apart (or thicker, per the header) than :data:`MAX_SLICE_MM`."""
    spacing = float(volume.spacing_mm[0])
    spacing = spacing if math.isfinite(spacing) else 0.0
    thickness = _header_thickness(volume.metadata or {})
    if max(spacing, thickness) <= MAX_SLICE_MM + SLICE_TOLERANCE_MM:
        return None
    consequence = f"(thicker than the {MAX_SLICE_MM:g} mm the model was made for): small lesions may be missed."
    if thickness > spacing:  # overlapping reconstruction: thick slices, closely spaced
        return f"Slices are {thickness:.1f} mm thick {consequence}"
    return f"Slices are {spacing:.1f} mm apart {consequence}"


def _header_thickness(metadata: dict) -> float:
    """DICOM SliceThickness in mm when the header gives a usable one, else 0."""
    try:
        value = float(metadata.get("SliceThickness", ""))
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _even_slices(n: int, count: int) -> np.ndarray:
    """Up to ``count`` evenly spread slice indices of ``n``, first and last included."""
    if n <= 0:
        return np.zeros(0, dtype=int)
    return np.unique(np.linspace(0, n - 1, min(n, max(count, 2))).round().astype(int))
