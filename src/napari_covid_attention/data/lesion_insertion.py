"""Synthetic pneumonia inserted into real chest CT: real anatomy with exact infection masks.

A model trained on phantoms alone has never seen a real heart, hilum or stomach and calls
them infection. Here the host is a real scan without pneumonia (``../shared/data/real-chest-ct``);
lesions are drawn into its own lungs by the phantoms' lesion code
(:func:`.phantom_lesions.draw_infection`: COVID-19-like multifocal peripheral ground glass,
crazy paving, later consolidation; CAP-like lobar/segmental consolidation with air
bronchograms or patchy bronchopneumonia; the paper's size ranges), so the mask is exact
and the two classes look as they do in the phantoms. The same host without lesions is a
"no pneumonia" case. Prior art: NormNet (Yao et al., IEEE TMI 2021).

How a lesion is blended into real tissue:
- ground glass raises HU only partly and never lowers a voxel, so vessels stay visible;
  consolidation replaces the tissue and carries air bronchograms;
- the lesion's *change* is blurred by a kernel like the scanner's and added to the host,
  so the host's own noise and texture stay under the lesion.

What differs between sites is augmented (:class:`SiteLook`): left/right mirroring, small
in-plane rotations, body size (voxel size scaled), slice thickness 1-5 mm (thick slabs
averaged from thin ones), low-dose noise, smooth or sharp kernels and IV-contrast-like
enhancement of soft tissue. Everything is drawn from one seed: a case is the same on
every run.

Lesions are never drawn over the hosts' annotated nodules or tumour (``avoid`` masks,
:mod:`.host_annotations`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_covid_attention.atomic import write_csv_atomic
from napari_covid_attention.classes import CAP, COVID, LESION_TYPES, MANIFEST_COLUMNS, NO_PNEUMONIA
from napari_covid_attention.data.phantom_anatomy import (
    LEFT_LUNG,
    RIGHT_LUNG,
    Anatomy,
    BodyPlan,
    Grid,
)
from napari_covid_attention.data.phantom_lesions import draw_infection, sample_infection_fraction
from napari_covid_attention.io.geometry import spacing_mm
from napari_covid_attention.io.nifti import save_nifti
from napari_covid_attention.io.volume import AIR_HU, CTVolume, hu_array
from napari_covid_attention.preprocess.lung import lung_mask

# Hosts finer than this in-plane are averaged 2 x 2 first: diagnosis pools to 2 mm anyway,
# and a quarter of the voxels makes every later step four times cheaper.
_MAX_INPLANE_MM = 1.0
_LESION_KERNEL_PX = 0.7  # in-plane blur of a lesion's change, like a standard kernel
INSERTED_MANIFEST_COLUMNS = (*MANIFEST_COLUMNS, "patient", "seed")


@dataclass
class HostScan:
    """A real chest CT without pneumonia, ready to receive lesions.

    ``hu`` float32 (z, y, x) on ``affine`` (canonical, axis-aligned); ``lungs`` its
    computed lung mask (1 right, 2 left); ``avoid`` where lesions must not go (annotated
    nodules or tumour); ``patient`` names the patient, for splitting by patient.
    """

    patient: str
    hu: np.ndarray
    affine: np.ndarray
    lungs: np.ndarray
    avoid: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return spacing_mm(self.affine)


@dataclass(frozen=True)
class SiteLook:
    """How one inserted case differs from its host, as scans from another site would."""

    mirror: bool  # left/right
    rotate_deg: float  # in-plane
    size_scale: float  # voxel size factor: a smaller or larger patient
    slab: int  # host slices averaged into one (slice thickness = slab x host spacing)
    kernel: str  # "as is" | "smooth" | "sharp"
    kernel_strength: float
    noise_hu: float  # extra noise (low dose); 0 for none
    enhancement_hu: float  # soft tissue outside the lungs raised (IV contrast); 0 for none


IDENTITY_LOOK = SiteLook(False, 0.0, 1.0, 1, "as is", 0.0, 0.0, 0.0)


@dataclass
class InsertedCase:
    """One generated case with its ground truth."""

    volume: CTVolume
    lung_mask: np.ndarray  # uint8, 1 right, 2 left (the host's computed mask, augmented)
    infection_mask: np.ndarray  # uint8
    label: str  # COVID-19 | CAP | no pneumonia
    lesion_flags: dict[str, bool]
    infection_fraction: float
    patient: str
    look: SiteLook
    seed: int


def make_host(patient: str, volume: CTVolume, avoid: np.ndarray | None = None) -> HostScan:
    """A host from a loaded real scan; averaged 2 x 2 in-plane when finer than 1 mm."""
    hu = np.maximum(np.asarray(volume.hu, dtype=np.float32), AIR_HU)  # scanner padding is air
    affine = np.array(volume.affine, dtype=float)
    avoid = np.zeros(hu.shape, bool) if avoid is None else np.asarray(avoid, bool)
    _check_axis_aligned(affine)
    spacing = spacing_mm(affine)
    if min(spacing[1], spacing[2]) < _MAX_INPLANE_MM:
        ny, nx = hu.shape[1] // 2 * 2, hu.shape[2] // 2 * 2
        hu = hu[:, :ny, :nx].reshape(hu.shape[0], ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))
        avoid = avoid[:, :ny, :nx].reshape(avoid.shape[0], ny // 2, 2, nx // 2, 2).any(axis=(2, 4))
        affine = affine.copy()
        affine[:3, 1:3] *= 2.0
        affine[:3, 3] += 0.5 * (affine[:3, 1] / 2.0 + affine[:3, 2] / 2.0)  # centre of the 2 x 2 block
    lungs = lung_mask(hu, spacing_mm(affine))
    return HostScan(patient, hu.astype(np.float32), affine, lungs, avoid)


def load_host(path: str | os.PathLike, annotations: str | os.PathLike | None = None) -> HostScan:
    """A host from a NIfTI file or DICOM folder; its nodules/tumour from ``annotations``
    (see :func:`.host_annotations.avoid_mask_for`). The patient is the file or folder name."""
    from napari_covid_attention.data.host_annotations import avoid_mask_for
    from napari_covid_attention.io.load import load_ct

    volume = load_ct(path)
    avoid = avoid_mask_for(path, annotations, volume.shape, volume.affine)
    return make_host(Path(path).name.split(".")[0], volume, avoid)


def sample_look(rng: np.random.Generator, host_slice_mm: float) -> SiteLook:
    """A random site: mirrored half the time, +-8 degrees, +-10 % size, 1-5 mm slices."""
    thickness = rng.uniform(1.0, 5.0)
    slab = max(1, int(round(thickness / host_slice_mm)))
    kernel = str(rng.choice(["as is", "smooth", "sharp"], p=[0.4, 0.3, 0.3]))
    return SiteLook(
        mirror=bool(rng.random() < 0.5),
        rotate_deg=float(rng.uniform(-8.0, 8.0)),
        size_scale=float(rng.uniform(0.9, 1.1)),
        slab=slab,
        kernel=kernel,
        kernel_strength=float(rng.uniform(0.5, 1.0) if kernel == "smooth" else rng.uniform(0.3, 0.8)),
        noise_hu=float(rng.uniform(15.0, 45.0) if rng.random() < 0.3 else 0.0),
        enhancement_hu=float(rng.uniform(40.0, 120.0) if rng.random() < 0.3 else 0.0),
    )


def generate_inserted_case(
    host: HostScan,
    seed: int,
    label: str,
    *,
    infection_fraction: float | None = None,
    look: SiteLook | None = None,
) -> InsertedCase:
    """Case ``seed`` on ``host``: ``label`` COVID-19 / CAP (lesions drawn) or "no pneumonia".

    Order matters: geometry first (the lesions then follow the moved lungs), lesions next,
    then what the scanner does to lesion and host alike (slab averaging, kernel, noise).
    """
    if label not in (COVID, CAP, NO_PNEUMONIA):
        raise ValueError(f"label must be {COVID}, {CAP} or {NO_PNEUMONIA}, got {label!r}")
    look_rng, size_rng, lesion_rng, noise_rng = (np.random.default_rng(c) for c in np.random.SeedSequence(int(seed)).spawn(4))
    if look is None:
        look = sample_look(look_rng, host.spacing_mm[0])
    hu, lungs, avoid = _move(host, look)
    affine = host.affine.copy()
    affine[:3, :3] *= look.size_scale
    infection = np.zeros(hu.shape, dtype=bool)
    flags = dict.fromkeys(LESION_TYPES, False)
    if label != NO_PNEUMONIA:
        fraction = sample_infection_fraction(size_rng, label) if infection_fraction is None else float(infection_fraction)
        hu, infection, flags = insert_lesions(lesion_rng, hu, affine, lungs, avoid, label, fraction)
    hu, lungs, infection, affine = _slabs(hu, lungs, infection, affine, look.slab)
    hu = _scanner(noise_rng, hu, lungs, look, spacing_mm(affine))
    lung_voxels = int(np.count_nonzero(lungs))
    volume = CTVolume(
        hu=hu_array(np.rint(hu)),
        affine=affine,
        metadata={"format": "real scan with inserted lesions", "host": host.patient, "seed": str(int(seed)), "kind": label},
    )
    return InsertedCase(
        volume=volume,
        lung_mask=lungs,
        infection_mask=infection.astype(np.uint8),
        label=label,
        lesion_flags=flags,
        infection_fraction=float(np.count_nonzero(infection)) / max(lung_voxels, 1),
        patient=host.patient,
        look=look,
        seed=int(seed),
    )


def insert_lesions(
    rng: np.random.Generator,
    hu: np.ndarray,
    affine: np.ndarray,
    lungs: np.ndarray,
    avoid: np.ndarray,
    label: str,
    fraction: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, bool]]:
    """Draw a ``label`` infection of ``fraction`` of the lungs into a real scan.

    Returns the new HU, the infection mask (exact: every voxel whose lesion was drawn, all
    inside ``lungs`` and outside ``avoid``) and the lesion types drawn. The lesion code
    works on a phantom's :class:`Anatomy`; :func:`_anatomy_of` describes the real chest in
    the same terms (lung extent, height, hila), measured from its lung mask.
    """
    drawable = np.where(avoid, 0, lungs).astype(np.uint8)
    anatomy = _anatomy_of(hu.astype(np.float32, copy=True), affine, drawable)
    infection = draw_infection(rng, anatomy, label, fraction)
    mask = infection.mask
    if not mask.any():
        return hu, mask, infection.flags
    box = _grow(ndimage.find_objects(mask.astype(np.uint8))[0], 3, mask.shape)
    change = anatomy.hu[box] - hu[box]
    out = hu.copy()
    out[box] += ndimage.gaussian_filter(change, (0.0, _LESION_KERNEL_PX, _LESION_KERNEL_PX))
    return out, mask, infection.flags


def _anatomy_of(hu: np.ndarray, affine: np.ndarray, lungs: np.ndarray) -> Anatomy:
    """The phantom lesion code's view of a real chest: grid, lung extent, height, hila."""
    spacing = spacing_mm(affine)
    origin = tuple(float(v) for v in affine[:3, 3])  # LPS of voxel (0, 0, 0)
    grid = Grid(tuple(int(n) for n in hu.shape), spacing, origin)  # type: ignore[arg-type]
    zyx = np.argwhere(lungs[:: 2, :: 4, :: 4] > 0) * np.array([2, 4, 4])
    if zyx.size == 0:
        raise ValueError("the host has no lungs to draw lesions into")
    mm = grid.to_mm(zyx.astype(float))  # (n, 3) LPS x, y, z
    lo, hi = mm.min(axis=0), mm.max(axis=0)
    centre, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1.0)
    plan = BodyPlan(
        cx=float(centre[0]), cy=float(centre[1]), body_a=float(half[0]) + 40.0, body_b=float(half[1]) + 40.0,
        fat=10.0, cav_a=float(half[0]), cav_b=float(half[1]), cav_y=0.0, z_base=float(lo[2]),
        height=float(hi[2] - lo[2]) or 1.0, mid_x=0.0, dome_right=0.27, dome_left=0.2, heart_scale=1.0,
        rib_pitch=26.0, rib_phase=0.0, fissure_jitter=(0.0, 0.0, 0.0), noise_sd=0.0, padding=False,
    )
    return Anatomy(hu=hu, lungs=lungs, grid=grid, plan=plan, hila=_hila(grid, lungs, plan))


def _hila(grid: Grid, lungs: np.ndarray, plan: BodyPlan) -> dict[int, np.ndarray]:
    """Each lung's hilum: its medial edge at 60 % of the lung height, mid-depth (LPS mm)."""
    z_index = int(np.clip(round(grid.to_index(np.array([0.0, 0.0, plan.z_base + 0.6 * plan.height]))[0]), 0, lungs.shape[0] - 1))
    hila = {}
    for label in (RIGHT_LUNG, LEFT_LUNG):
        rows = np.argwhere(lungs[z_index] == label)
        if rows.size == 0:
            rows = np.argwhere(lungs == label)[:, 1:]
        if rows.size == 0:
            continue
        # The right lung lies at small x: its medial edge is its largest x, and vice versa.
        x = rows[:, 1].max() if label == RIGHT_LUNG else rows[:, 1].min()
        y = float(np.median(rows[:, 0]))
        hila[label] = grid.to_mm(np.array([z_index, y, x], dtype=float))
    return hila


def _move(host: HostScan, look: SiteLook) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror and rotate the host in-plane (HU trilinear; labels nearest)."""
    hu, lungs, avoid = host.hu, host.lungs, host.avoid
    if look.mirror:  # the patient's right becomes left: the lung labels swap sides
        hu, avoid = hu[:, :, ::-1], avoid[:, :, ::-1]
        lungs = np.choose(lungs[:, :, ::-1], [0, LEFT_LUNG, RIGHT_LUNG]).astype(np.uint8)
    if abs(look.rotate_deg) > 0.1:
        hu = ndimage.rotate(hu, look.rotate_deg, axes=(1, 2), reshape=False, order=1, cval=float(AIR_HU))
        lungs = ndimage.rotate(lungs, look.rotate_deg, axes=(1, 2), reshape=False, order=0, cval=0)
        avoid = ndimage.rotate(avoid.astype(np.uint8), look.rotate_deg, axes=(1, 2), reshape=False, order=0, cval=0) > 0
    return np.ascontiguousarray(hu, dtype=np.float32), np.ascontiguousarray(lungs), np.ascontiguousarray(avoid)


def _slabs(
    hu: np.ndarray, lungs: np.ndarray, infection: np.ndarray, affine: np.ndarray, slab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thick slices as a scanner makes them: the mean of ``slab`` thin ones (masks: majority)."""
    if slab <= 1:
        return hu, lungs, infection, affine
    n = hu.shape[0] // slab
    if n < 1:
        return hu, lungs, infection, affine

    def mean(a: np.ndarray) -> np.ndarray:
        return a[: n * slab].reshape(n, slab, *a.shape[1:]).mean(axis=1, dtype=np.float32)

    out = affine.copy()
    out[:3, 3] += affine[:3, 0] * (slab - 1) / 2.0  # the slab's centre
    out[:3, 0] *= slab
    lung_share = [mean(lungs == label) for label in (RIGHT_LUNG, LEFT_LUNG)]
    thick_lungs = np.where(lung_share[0] + lung_share[1] >= 0.5, np.where(lung_share[0] >= lung_share[1], RIGHT_LUNG, LEFT_LUNG), 0)
    return mean(hu), thick_lungs.astype(np.uint8), mean(infection) >= 0.5, out


def _scanner(rng: np.random.Generator, hu: np.ndarray, lungs: np.ndarray, look: SiteLook, spacing: tuple[float, ...]) -> np.ndarray:
    """Kernel, contrast enhancement and low-dose noise of the site, over lesion and host alike."""
    if look.kernel == "smooth":
        hu = ndimage.gaussian_filter(hu, (0.0, look.kernel_strength, look.kernel_strength))
    elif look.kernel == "sharp":
        hu = hu + look.kernel_strength * (hu - ndimage.gaussian_filter(hu, (0.0, 1.0, 1.0)))
    if look.enhancement_hu > 0:  # blood and enhancing tissue brighten; lungs and fat do not
        soft = (hu > 10.0) & (hu < 150.0) & (lungs == 0)
        hu = hu + look.enhancement_hu * ndimage.gaussian_filter(soft.astype(np.float32), 1.0)
    if look.noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), (0.0, 0.6, 0.6))
        hu = hu + noise * np.float32(look.noise_hu / max(float(noise.std()), 1e-6))
    return np.maximum(hu, AIR_HU - 100.0)


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape, strict=True))


def _check_axis_aligned(affine: np.ndarray) -> None:
    """The lesion code's grid is axis-aligned: canonical volumes without obliquity."""
    expected = np.zeros((3, 3), bool)
    expected[0, 2] = expected[1, 1] = expected[2, 0] = True
    if np.any(np.abs(affine[:3, :3][~expected]) > 1e-3 * np.abs(affine[:3, :3]).max()) or np.any(np.diag(affine[:3, 2::-1]) <= 0):
        raise ValueError("lesions can only be inserted into axis-aligned scans (no gantry tilt or oblique planes)")


# --------------------------------------------------------------------------- data sets


def write_inserted_dataset(
    hosts: Sequence[tuple[str, Callable[[], HostScan]]],
    out_dir: str | os.PathLike,
    n_per_host: int,
    *,
    seed: int = 0,
    healthy_share: float = 0.2,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``n_per_host`` cases per host (NIfTI image, lung and infection masks) and manifest.csv.

    ``hosts`` are (patient, loader) pairs; each host is loaded once. A ``healthy_share`` of
    each host's cases have no lesion (label "no pneumonia"); the rest alternate COVID-19-
    and CAP-like. The manifest has a ``patient`` column, to split by patient.
    """
    out = Path(out_dir)
    for sub in ("images", "lungs", "infections"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    total, done = n_per_host * len(hosts), 0
    for host_index, (patient, loader) in enumerate(hosts):
        host = loader()
        labels = _labels(n_per_host, healthy_share, seed + host_index)
        for i, label in enumerate(labels):
            case_seed = int(np.random.SeedSequence([int(seed), host_index, i]).generate_state(1)[0])
            case = generate_inserted_case(host, case_seed, label)
            stem = f"{_safe(patient)}_{i:03d}"
            paths = {kind: out / kind / f"{stem}.nii.gz" for kind in ("images", "lungs", "infections")}
            save_nifti(paths["images"], case.volume.hu, case.volume.affine)
            save_nifti(paths["lungs"], case.lung_mask, case.volume.affine)
            save_nifti(paths["infections"], case.infection_mask, case.volume.affine)
            rows.append(
                {
                    "image": f"images/{stem}.nii.gz",
                    "label": label,
                    "infection_mask": f"infections/{stem}.nii.gz",
                    "lung_mask": f"lungs/{stem}.nii.gz",
                    **{t: int(case.lesion_flags[t]) for t in LESION_TYPES},
                    "infection_fraction": f"{case.infection_fraction:.6f}",
                    "patient": patient,
                    "seed": case_seed,
                }
            )
            done += 1
            if progress:
                progress(done, total)
    manifest = out / "manifest.csv"
    write_csv_atomic(manifest, rows, list(INSERTED_MANIFEST_COLUMNS))
    return manifest


def _labels(n: int, healthy_share: float, seed: int) -> list[str]:
    """A host's labels: ``healthy_share`` without pneumonia, the rest half COVID-19, half CAP."""
    healthy = int(round(healthy_share * n))
    sick = [COVID if i % 2 == 0 else CAP for i in range(n - healthy)]
    labels = [NO_PNEUMONIA] * healthy + sick
    return [labels[i] for i in np.random.default_rng(seed).permutation(n)]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
