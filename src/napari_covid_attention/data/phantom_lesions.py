"""Pneumonia lesions of the synthetic CT phantoms: where the class signal lives.

COVID-19-like infection is multifocal, mostly bilateral, peripheral and lower/posterior,
predominantly ground glass, often with crazy paving, with consolidation in later stages.
CAP-like infection is mostly one lobar or segmental consolidation, bounded by a fissure,
with air bronchograms and sometimes a ground-glass halo; a minority is patchy
bronchopneumonia. Each class has a minority that looks like the other, so the task is
learnable but not trivial, and small infections carry less evidence than large ones.

Every lesion takes exactly the number of voxels it is given: its shape is a random field
(an ellipsoid or a wedge from the hilum, roughened by smooth noise) and the lesion is the
``k`` lowest-field lung voxels of its box, so requested infection fractions are met.

The infection mask is every voxel of every lesion, air bronchograms included (radiologists
delineate the whole consolidation), and nothing outside the lungs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from napari_covid_attention.classes import CAP, COVID
from napari_covid_attention.data.phantom_anatomy import (
    LEFT_LUNG,
    RIGHT_LUNG,
    Anatomy,
    Grid,
    box_axes,
    branching_tree,
    draw_tubes,
    smooth_noise,
)

# Ground glass fainter than this is drawn only as the background of a reticular lesion.
FAINTEST_GGO_HU = -730.0
_SEPTUM_HU = -120.0
_BRONCHOGRAM_HU = -930.0

# log-normal infection size (fraction of lung volume): median, sigma (log), limits
_SIZE = {COVID: (0.08, 1.1, 0.003, 0.5), CAP: (0.025, 1.0, 0.002, 0.35)}


@dataclass(frozen=True)
class LesionSpec:
    """One lesion to draw: where, how big (share of the infection), and what it looks like."""

    side: int
    share: float
    placement: str  # "peripheral" (subpleural blob), "lobar" (fissure-bounded wedge), "central"
    core: float  # fraction of its voxels that are consolidation (the innermost ones)
    ggo_hu: float
    consolidation_hu: float
    reticulation: bool
    bronchogram: bool
    margin: float  # width of the soft edge, in field units (0.1 sharp .. 0.4 ill-defined)
    roughness: float  # amplitude of the noise that makes the outline irregular


@dataclass
class Infection:
    """The drawn infection: binary mask (z, y, x) and which lesion types it contains."""

    mask: np.ndarray
    flags: dict[str, bool]


def sample_infection_fraction(rng: np.random.Generator, label: str) -> float:
    """Infection volume / lung volume for a case of ``label``: COVID-19 larger on average."""
    median, sigma, low, high = _SIZE[label]
    return float(np.clip(median * np.exp(sigma * rng.standard_normal()), low, high))


# --------------------------------------------------------------------------- planning


def plan_lesions(rng: np.random.Generator, label: str, fraction: float) -> list[LesionSpec]:
    """The lesions of one case, largest share first."""
    specs = _plan_covid(rng, fraction) if label == COVID else _plan_cap(rng, fraction)
    return sorted(specs, key=lambda spec: -spec.share)


def atypia(fraction: float) -> float:
    """0 for infections of 5 % of the lungs or more, rising to 1 at 0.2 %.

    Small infections are less typical of their cause: the probability of the other class's
    pattern grows with it, so small cases carry less evidence, as in real scans.
    """
    return float(np.clip((np.log10(0.05) - np.log10(fraction)) / 1.4, 0.0, 1.0))


def _sides(rng: np.random.Generator, n: int, p_bilateral: float) -> list[int]:
    """Lung of each of ``n`` lesions: both lungs with probability ``p_bilateral`` (if n > 1)."""
    first = RIGHT_LUNG if rng.random() < 0.55 else LEFT_LUNG
    if n == 1 or rng.random() >= p_bilateral:
        return [first] * n
    other = LEFT_LUNG if first == RIGHT_LUNG else RIGHT_LUNG
    rest = [RIGHT_LUNG if rng.random() < 0.5 else LEFT_LUNG for _ in range(n - 2)]
    return [first, other, *rest]


def _plan_covid(rng: np.random.Generator, fraction: float) -> list[LesionSpec]:
    """Multifocal peripheral ground glass; a stage decides crazy paving and consolidation."""
    odd = atypia(fraction)
    n = int(np.clip(1 + rng.poisson(max(0.3, 1.3 + 2.0 * (np.log10(fraction) + 2.5))), 1, 10))
    p_consolidative = 0.08 + 0.2 * odd
    stage = rng.choice(
        ["early", "progressive", "consolidative"],
        p=[(1 - p_consolidative) / 2, (1 - p_consolidative) / 2, p_consolidative],
    )
    ggo = rng.uniform(-690.0, -470.0)
    reticular = stage == "progressive" and rng.random() < 0.65 or stage == "early" and rng.random() < 0.12
    shares = rng.dirichlet(np.full(n, 1.5))
    specs = []
    for side, share in zip(_sides(rng, n, 0.9 - 0.25 * odd), shares, strict=False):
        if stage == "consolidative":
            core = rng.uniform(0.5, 0.9)
        elif stage == "progressive" and rng.random() < 0.55:
            core = rng.uniform(0.05, 0.35)
        else:
            core = 0.0
        faint = reticular and rng.random() < 0.2
        specs.append(
            LesionSpec(
                side=side,
                share=float(share),
                placement="peripheral",
                core=float(core),
                ggo_hu=float(rng.uniform(-790.0, -745.0) if faint else ggo + rng.uniform(-35.0, 35.0)),
                consolidation_hu=float(rng.uniform(-70.0, 30.0)),
                reticulation=bool(reticular),
                bronchogram=bool(core > 0 and rng.random() < 0.25),
                margin=float(rng.uniform(0.25, 0.45)),
                roughness=float(rng.uniform(0.2, 0.4)),
            )
        )
    return specs


def _plan_cap(rng: np.random.Generator, fraction: float) -> list[LesionSpec]:
    """Lobar/segmental consolidation (mostly one lung), or patchy bronchopneumonia."""
    odd = atypia(fraction)
    p_patchy, p_glassy = 0.1 + 0.15 * odd, 0.06 + 0.12 * odd
    pattern = rng.choice(["patchy", "glassy", "lobar"], p=[p_patchy, p_glassy, 1 - p_patchy - p_glassy])
    if pattern == "patchy":  # bronchopneumonia: central patches, often both lower lobes
        n = int(rng.integers(3, 8))
        sides = _sides(rng, n, 0.55)
        placement, p_bronchogram, shares = "central", 0.3, rng.dirichlet(np.full(n, 2.0))
    else:
        n = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
        sides = _sides(rng, n, 0.15)
        placement, p_bronchogram, shares = "lobar", 0.8, rng.dirichlet(np.full(n, 3.0))
    halo = rng.random() < 0.45
    specs = []
    for side, share in zip(sides, shares, strict=False):
        if pattern == "patchy":
            core = rng.uniform(0.3, 0.8)
        elif pattern == "glassy":  # early or atypical lobar pneumonia, still mostly ground glass
            core = rng.uniform(0.0, 0.3)
        else:
            core = rng.uniform(0.6, 0.88) if halo else 1.0
        specs.append(
            LesionSpec(
                side=side,
                share=float(share),
                placement=placement,
                core=float(core),
                ggo_hu=float(rng.uniform(-660.0, -450.0)),
                consolidation_hu=float(rng.uniform(-40.0, 45.0)),
                reticulation=bool(rng.random() < 0.04),
                bronchogram=bool(rng.random() < p_bronchogram),
                margin=float(rng.uniform(0.06, 0.15) if placement == "lobar" else rng.uniform(0.2, 0.35)),
                roughness=float(rng.uniform(0.1, 0.2) if placement == "lobar" else rng.uniform(0.3, 0.5)),
            )
        )
    return specs


# --------------------------------------------------------------------------- drawing


@dataclass
class _Context:
    """What every lesion needs to know about the phantom it is drawn into."""

    anatomy: Anatomy
    available: np.ndarray  # bool: lung not yet infected
    infection: np.ndarray  # bool
    pleura_mm: np.ndarray  # coarse distance to the lung surface
    coarse_step: tuple[int, int, int]
    lung_boxes: dict[int, tuple[slice, slice, slice]]
    counts: dict[str, int]


def draw_infection(rng: np.random.Generator, anatomy: Anatomy, label: str, fraction: float) -> Infection:
    """Draw the lesions of a ``label`` case covering ``fraction`` of the lungs into ``anatomy.hu``."""
    lungs = anatomy.lungs > 0
    ctx = _context(anatomy, lungs)
    target_total = max(1, int(round(fraction * int(lungs.sum()))))
    remaining = target_total
    specs = plan_lesions(rng, label, fraction)
    for index, spec in enumerate(specs):
        if remaining <= 0:
            break
        share = spec.share / sum(s.share for s in specs[index:])
        remaining -= _draw_lesion(rng, ctx, spec, max(1, int(round(remaining * share))))
    for _ in range(8):  # top up when boxes ran out of lung (large infections)
        if remaining <= max(2, 0.03 * target_total):
            break
        spec = specs[int(rng.integers(len(specs)))]
        side = spec.side if rng.random() < 0.7 else 3 - spec.side
        remaining -= _draw_lesion(rng, ctx, replace(spec, side=side), remaining)
    flags = {
        "ground_glass": ctx.counts["ggo"] > 0,
        "consolidation": ctx.counts["consolidation"] > 0,
        "crazy_paving": ctx.counts["crazy"] > 0,
        "air_bronchogram": ctx.counts["bronchogram"] > 0,
        "septal_thickening": ctx.counts["septa"] > 0,
    }
    return Infection(mask=ctx.infection, flags=flags)


def _context(anatomy: Anatomy, lungs: np.ndarray) -> _Context:
    """Lesion bookkeeping plus a coarse (~6 mm) distance-to-pleura map for placing lesions."""
    grid = anatomy.grid
    step = (*(max(1, int(round(6.0 / s))) for s in grid.spacing),)
    coarse = lungs[:: step[0], :: step[1], :: step[2]]
    spacing = tuple(s * k for s, k in zip(grid.spacing, step, strict=False))
    pleura = np.zeros(coarse.shape, dtype=np.float32)
    found = ndimage.find_objects(coarse.astype(np.uint8))
    if found and found[0] is not None:
        crop = tuple(slice(max(0, c.start - 1), c.stop + 1) for c in found[0])
        pleura[crop] = ndimage.distance_transform_edt(coarse[crop], sampling=spacing)
    boxes = {}
    for label in (RIGHT_LUNG, LEFT_LUNG):
        found = ndimage.find_objects((anatomy.lungs == label).astype(np.uint8))
        if found and found[0] is not None:
            boxes[label] = found[0]
    counts = dict.fromkeys(("ggo", "consolidation", "crazy", "bronchogram", "septa"), 0)
    return _Context(anatomy, lungs.copy(), np.zeros_like(lungs), pleura, step, boxes, counts)


def _draw_lesion(rng: np.random.Generator, ctx: _Context, spec: LesionSpec, k: int) -> int:
    """Draw one lesion of ``k`` voxels (fewer if its region runs out); returns the count drawn."""
    if spec.side not in ctx.lung_boxes:
        return 0
    centre = _pick_centre(rng, ctx, spec)
    if centre is None:
        return 0
    if spec.placement == "lobar":
        box, field, region = _wedge_field(rng, ctx, spec, centre)
    else:
        box, field, region = _blob_field(rng, ctx, spec, centre, k)
    candidates = region & ctx.available[box]
    count = int(candidates.sum())
    # a blob may take half its box at most, so its outline is its own and never the box's
    k = min(k, count if spec.placement == "lobar" else count // 2)
    if k <= 0:
        return 0
    values = field[candidates]
    threshold = np.partition(values, k - 1)[k - 1]
    lesion = candidates & (field <= threshold)
    ctx.available[box] &= ~lesion
    ctx.infection[box] |= lesion
    _render(rng, ctx, spec, box, field, lesion, threshold)
    return int(lesion.sum())


def _pick_centre(rng: np.random.Generator, ctx: _Context, spec: LesionSpec) -> np.ndarray | None:
    """A lesion seed (LPS mm) on the coarse lung grid, weighted by the placement's preferences."""
    anatomy, step = ctx.anatomy, ctx.coarse_step
    labels = anatomy.lungs[:: step[0], :: step[1], :: step[2]]
    free = ctx.available[:: step[0], :: step[1], :: step[2]]
    cand = np.flatnonzero((labels == spec.side) & free)
    if cand.size == 0:
        return None
    zyx = np.stack(np.unravel_index(cand, labels.shape), axis=-1) * np.asarray(step)
    mm = anatomy.grid.to_mm(zyx.astype(float))
    plan = anatomy.plan
    height = np.clip(plan.t_of(mm[:, 2]), 0.0, 1.0)
    posterior = np.clip((mm[:, 1] - plan.cy - plan.cav_y) / plan.cav_b * 0.5 + 0.5, 0.0, 1.0)
    depth = ctx.pleura_mm.ravel()[cand]
    if spec.placement == "peripheral":  # costal rather than mediastinal pleura
        outer = ((mm[:, 0] - plan.cx) / plan.cav_a) ** 2 + ((mm[:, 1] - plan.cy - plan.cav_y) / plan.cav_b) ** 2
        weight = np.exp(-depth / 6.0) * (0.5 + 1.5 * (1.0 - height)) * (0.6 + 0.8 * posterior) * outer
    elif spec.placement == "central":
        weight = (depth > 10.0) * (0.3 + 1.7 * (1.0 - height)) + 1e-6
    else:
        weight = np.exp(-depth / 10.0) * (0.4 + (1.0 - height))
    choice = rng.choice(cand.size, p=weight / weight.sum())
    jitter = rng.uniform(-0.5, 0.5, 3) * np.asarray(step)
    return anatomy.grid.to_mm(zyx[choice] + jitter)


def _blob_field(
    rng: np.random.Generator, ctx: _Context, spec: LesionSpec, centre: np.ndarray, k: int
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """A roughened ellipsoidal field around ``centre``, in a box large enough for ``k`` voxels.

    Peripheral lesions are flattened against the nearest pleura (subpleural, band-like);
    central ones are round.
    """
    grid = ctx.anatomy.grid
    radius = (3.0 * k * float(np.prod(grid.spacing)) / (4.0 * np.pi)) ** (1 / 3)
    normal = _inward(ctx, centre) if spec.placement == "peripheral" else None
    if normal is None:
        axes = radius * rng.uniform(0.75, 1.3, 3)
        reach = float(axes.max())
    else:
        thin = radius * rng.uniform(0.45, 0.65)
        wide = float(np.sqrt(radius**3 / thin))
        reach = wide
    half = 2.4 * reach + 2.0 * np.asarray(grid.spacing[::-1])
    box = _clip_box(ctx.lung_boxes[spec.side], grid, centre - half, centre + half)
    z, y, x = box_axes(grid, box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if normal is None:
        q = (dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2
    else:
        across = dx * normal[0] + dy * normal[1] + dz * normal[2]
        q = (across / thin) ** 2 + (dx**2 + dy**2 + dz**2 - across**2) / wide**2
    field = np.sqrt(q) + spec.roughness * _box_noise(rng, grid, box, max(3.0, radius / 2.5))
    return box, field, ctx.anatomy.lungs[box] == spec.side


def _inward(ctx: _Context, centre: np.ndarray) -> np.ndarray | None:
    """Unit vector (LPS) away from the nearest pleura at ``centre``, from the coarse distance map."""
    step = np.asarray(ctx.coarse_step)
    index = np.round(ctx.anatomy.grid.to_index(centre) / step).astype(int)
    shape = np.asarray(ctx.pleura_mm.shape)
    gradient = np.zeros(3)
    for axis in range(3):
        lo, hi = index.copy(), index.copy()
        lo[axis], hi[axis] = max(index[axis] - 1, 0), min(index[axis] + 1, shape[axis] - 1)
        lo, hi = np.clip(lo, 0, shape - 1), np.clip(hi, 0, shape - 1)
        span = (hi[axis] - lo[axis]) * step[axis] * ctx.anatomy.grid.spacing[axis]
        if span > 0:
            gradient[axis] = (ctx.pleura_mm[tuple(hi)] - ctx.pleura_mm[tuple(lo)]) / span
    norm = float(np.linalg.norm(gradient))
    return None if norm < 1e-6 else gradient[::-1] / norm


def _wedge_field(
    rng: np.random.Generator, ctx: _Context, spec: LesionSpec, centre: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """A cone from the hilum through ``centre``, growing from the pleura inwards, inside one lobe."""
    anatomy, grid = ctx.anatomy, ctx.anatomy.grid
    box = ctx.lung_boxes[spec.side]
    z, y, x = box_axes(grid, box)
    hilum = anatomy.hila[spec.side]
    axis = centre - hilum
    reach = float(np.linalg.norm(axis))
    axis /= max(reach, 1e-6)
    vx, vy, vz = x - hilum[0], y - hilum[1], z - hilum[2]
    along = vx * axis[0] + vy * axis[1] + vz * axis[2]
    dist = np.sqrt(vx**2 + vy**2 + vz**2) + 1e-3
    angular = (1.0 - along / dist) / (1.0 - np.cos(np.radians(30.0)))
    radial = np.clip((reach - along) / reach, 0.0, None)
    field = angular + 1.2 * radial + spec.roughness * _box_noise(rng, grid, box, 6.0)
    lobe = lobe_of(anatomy, spec.side, z, y, x)
    region = (anatomy.lungs[box] == spec.side) & (lobe == lobe_of(anatomy, spec.side, *centre[::-1]))
    return box, field, region


def lobe_of(anatomy: Anatomy, side: int, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Lobe code of LPS points (0 upper, 1 middle, 2 lower) from oblique and horizontal fissures.

    The oblique fissure rises from the anterior diaphragm to the posterior upper third; the
    right lung also has a horizontal fissure that separates the middle lobe.
    """
    plan = anatomy.plan
    jitter_r, jitter_l, jitter_h = plan.fissure_jitter
    jitter = jitter_r if side == RIGHT_LUNG else jitter_l
    yn = (np.asarray(y) - plan.cy - plan.cav_y) / plan.cav_b  # -1 front .. +1 back
    fissure_t = 0.12 + jitter / 2 + (0.62 + jitter - 0.12 - jitter / 2) * (yn + 1.0) / 2.0
    t = plan.t_of(np.asarray(z))
    t, fissure_t, _ = np.broadcast_arrays(t, fissure_t, np.asarray(x))
    lower = t < fissure_t
    code = np.where(lower, 2, 0).astype(np.int8)
    if side == RIGHT_LUNG:
        code[~lower & (t < 0.5 + jitter_h)] = 1
    return code


def _clip_box(
    outer: tuple[slice, slice, slice], grid: Grid, lo_xyz: np.ndarray, hi_xyz: np.ndarray
) -> tuple[slice, slice, slice]:
    """The voxel box of [lo, hi] (LPS mm) inside ``outer``."""
    lo = np.floor(grid.to_index(lo_xyz)).astype(int)
    hi = np.ceil(grid.to_index(hi_xyz)).astype(int) + 1
    return tuple(
        slice(int(np.clip(a, s.start, s.stop - 1)), int(np.clip(b, s.start + 1, s.stop)))
        for a, b, s in zip(lo, hi, outer, strict=False)
    )  # type: ignore[return-value]


def _box_noise(rng: np.random.Generator, grid: Grid, box: tuple[slice, slice, slice], sigma_mm: float) -> np.ndarray:
    """Unit smooth noise over ``box`` with a correlation length of ``sigma_mm``."""
    shape = tuple(s.stop - s.start for s in box)
    return smooth_noise(rng, shape, tuple(sigma_mm / s for s in grid.spacing))


# --------------------------------------------------------------------------- rendering


def _render(
    rng: np.random.Generator,
    ctx: _Context,
    spec: LesionSpec,
    box: tuple[slice, slice, slice],
    field: np.ndarray,
    lesion: np.ndarray,
    threshold: float,
) -> None:
    """Paint one lesion's voxels: ground glass, consolidated core, septa, air bronchograms."""
    grid = ctx.anatomy.grid
    hu = ctx.anatomy.hu[box]
    values = field[lesion]
    n_core = int(round(spec.core * values.size))
    core = np.zeros_like(lesion)
    if n_core > 0:
        core_threshold = np.partition(values, n_core - 1)[n_core - 1]
        core = lesion & (field <= core_threshold)
    glass = lesion & ~core
    depth = np.clip((threshold - field) / spec.margin, 0.0, 1.0)
    weight = 0.3 + 0.7 * depth
    texture = _box_noise(rng, grid, box, 3.0)
    level = spec.ggo_hu + 35.0 * texture
    raised = hu + weight * (level - hu)
    hu[glass] = np.maximum(hu, raised)[glass]
    if spec.reticulation and glass.any():
        septa = _septa(rng, grid, box)
        hu[glass] += (septa * (_SEPTUM_HU - hu))[glass]
        drawn = int((glass & (septa > 0.5)).sum())
        ctx.counts["septa"] += drawn
        if spec.ggo_hu >= FAINTEST_GGO_HU:
            ctx.counts["crazy"] += drawn
    if spec.ggo_hu >= FAINTEST_GGO_HU:
        ctx.counts["ggo"] += int(glass.sum())
    if core.any():
        solid = spec.consolidation_hu + 20.0 * texture
        core_weight = np.clip((threshold - field) / (0.5 * spec.margin) + 0.6, 0.0, 1.0)
        hu[core] = (hu + core_weight * (solid - hu))[core]
        ctx.counts["consolidation"] += int(core.sum())
        if spec.bronchogram:
            ctx.counts["bronchogram"] += _bronchogram(rng, ctx, spec, box, core, hu)


def _septa(rng: np.random.Generator, grid: Grid, box: tuple[slice, slice, slice]) -> np.ndarray:
    """Thickened interlobular septa: a polygonal net at the zero set of band-limited noise.

    The mesh (about 1-1.5 cm, the size of secondary pulmonary lobules) is kept coarse enough
    to be resolved on the grid.
    """
    sigma = max(2.6, 1.05 * grid.inplane_mm)
    field = _box_noise(rng, grid, box, sigma)
    width = max(1.0, 0.5 * grid.inplane_mm) / sigma
    return np.exp(-((field / width) ** 2)) * 0.85


def _bronchogram(
    rng: np.random.Generator,
    ctx: _Context,
    spec: LesionSpec,
    box: tuple[slice, slice, slice],
    core: np.ndarray,
    hu: np.ndarray,
) -> int:
    """Air-filled bronchi branching through the consolidation from its hilar side."""
    grid = ctx.anatomy.grid
    zyx = np.argwhere(core)
    if len(zyx) < 20:
        return 0
    offset = np.array([s.start for s in box])
    points = grid.to_mm(zyx + offset)
    hilum = ctx.anatomy.hila[spec.side]
    root = points[int(np.argmin(np.linalg.norm(points - hilum, axis=1)))]
    sample = points[rng.choice(len(points), size=min(len(points), 400), replace=False)]
    radius = (3.0 * len(points) * float(np.prod(grid.spacing)) / (4.0 * np.pi)) ** (1 / 3)
    r0 = float(np.clip(0.15 * radius, 1.6, 4.0))
    segments = branching_tree(rng, root, sample, r0, max(0.7, 0.45 * grid.inplane_mm), reach=0.6)
    local = Grid(hu.shape, grid.spacing, tuple(grid.to_mm(offset.astype(float))))  # type: ignore[arg-type]
    occupancy = np.zeros(hu.shape, dtype=np.float32)
    draw_tubes(occupancy, local, segments)
    occupancy[~core] = 0.0
    hu += occupancy * (_BRONCHOGRAM_HU - hu)
    return int((occupancy > 0.5).sum())

