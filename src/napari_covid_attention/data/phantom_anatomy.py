"""Normal chest anatomy of the synthetic CT phantoms: body, bones, mediastinum, lungs, airways, vessels.

Every structure is an implicit shape in patient millimetres driven by a few random body
parameters (:class:`BodyPlan`), evaluated with broadcasting on 2D (y, x) maps wherever a
structure does not change along z. That keeps a phantom fast, deterministic from its random
generator, and the same anatomy at any grid size.

Frames: arrays are (z, y, x) in the canonical orientation; coordinates are LPS millimetres.
"Body frame" coordinates are LPS minus the body centre (``X`` towards the patient's left,
``Y`` posterior, ``Z`` superior); the patient's right lung is at negative ``X``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

RIGHT_LUNG, LEFT_LUNG = 1, 2

HU_AIR = -1000.0
HU_PADDING = -3024.0
HU_FAT = -100.0
HU_MEDIASTINAL_FAT = -85.0
HU_MUSCLE = 45.0
HU_SOFT = 38.0
HU_BLOOD = 42.0
HU_LIVER = 60.0
HU_SPLEEN = 48.0
HU_FLUID = 12.0
HU_CARTILAGE = 110.0
HU_DISC = 85.0
HU_MARROW = 230.0
HU_CORTEX = 900.0
HU_LUNG = -872.0
HU_VESSEL = 40.0
HU_AIRWAY_WALL = 0.0
HU_TABLE_SHELL = 90.0
HU_TABLE_CORE = -190.0

_Z_CENTRE_MM = -160.0  # couch position of the field of view's centre (only sets the origin)


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a phantom: shape (z, y, x), spacing (z, y, x) mm, LPS origin (x, y, z)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def covering(cls, shape: tuple[int, int, int], fov_mm: tuple[float, float, float]) -> Grid:
        """A grid of ``shape`` voxels spanning ``fov_mm`` (z, y, x), centred on the scanner axis."""
        spacing = tuple(float(f) / int(n) for f, n in zip(fov_mm, shape, strict=False))
        origin = (
            -fov_mm[2] / 2 + spacing[2] / 2,
            -fov_mm[1] / 2 + spacing[1] / 2,
            _Z_CENTRE_MM - fov_mm[0] / 2 + spacing[0] / 2,
        )
        return cls(tuple(int(n) for n in shape), spacing, origin)  # type: ignore[arg-type]

    @property
    def affine(self) -> np.ndarray:
        """Core affine: voxel (z, y, x, 1) -> LPS (x, y, z, 1), canonical orientation."""
        (sz, sy, sx), (ox, oy, oz) = self.spacing, self.origin
        return np.array([[0.0, 0.0, sx, ox], [0.0, sy, 0.0, oy], [sz, 0.0, 0.0, oz], [0.0, 0.0, 0.0, 1.0]])

    @property
    def inplane_mm(self) -> float:
        return float(np.sqrt(self.spacing[1] * self.spacing[2]))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS z, y, x of the voxel centres, shaped (nz,1,1), (1,ny,1), (1,1,nx)."""
        (nz, ny, nx), (sz, sy, sx), (ox, oy, oz) = self.shape, self.spacing, self.origin
        z = (oz + sz * np.arange(nz, dtype=np.float32)).reshape(nz, 1, 1)
        y = (oy + sy * np.arange(ny, dtype=np.float32)).reshape(1, ny, 1)
        x = (ox + sx * np.arange(nx, dtype=np.float32)).reshape(1, 1, nx)
        return z, y, x

    def to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Fractional voxel index (z, y, x) of LPS points (..., 3) given as (x, y, z)."""
        xyz = np.asarray(xyz, dtype=float)
        zyx = xyz[..., ::-1] - np.asarray(self.origin[::-1])
        return zyx / np.asarray(self.spacing)

    def to_mm(self, zyx_index: np.ndarray) -> np.ndarray:
        """LPS (x, y, z) of voxel indices (..., 3) given as (z, y, x)."""
        zyx = np.asarray(zyx_index, dtype=float) * np.asarray(self.spacing)
        return (zyx + np.asarray(self.origin[::-1]))[..., ::-1]


@dataclass(frozen=True)
class BodyPlan:
    """The random shape parameters of one patient (mm, body frame unless noted)."""

    cx: float  # body centre, LPS x
    cy: float  # body centre, LPS y
    body_a: float  # trunk half-width
    body_b: float  # trunk half-depth
    fat: float  # subcutaneous fat thickness
    cav_a: float  # thoracic cavity half-width (inner rib surface)
    cav_b: float  # thoracic cavity half-depth
    cav_y: float  # thoracic cavity centre
    z_base: float  # LPS z of the lowest lung point (posterior costophrenic recess)
    height: float  # lung height from that point to the apex
    mid_x: float  # mediastinal midline
    dome_right: float  # diaphragm dome heights, fraction of the lung height
    dome_left: float
    heart_scale: float
    rib_pitch: float
    rib_phase: float
    fissure_jitter: tuple[float, float, float]  # oblique R, oblique L, horizontal (fractions)
    noise_sd: float  # HU of the image noise
    padding: bool  # scanner padding outside the reconstruction circle

    def to_lps(self, xyz_body: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 3) to LPS."""
        return np.asarray(xyz_body, dtype=float) + np.array([self.cx, self.cy, 0.0])

    def t_of(self, z_lps: np.ndarray | float) -> np.ndarray | float:
        """Normalised lung height: 0 at the lowest lung point, 1 at the apex."""
        return (z_lps - self.z_base) / self.height


def sample_plan(rng: np.random.Generator, fov_mm: tuple[float, float, float]) -> BodyPlan:
    """Draw one patient: body size, fat, lung size/shape, position and scan coverage."""
    size = rng.uniform(0.88, 1.1)
    lung_scale = size * rng.uniform(0.94, 1.06)
    body_a = 150.0 * size * rng.uniform(0.95, 1.05)
    body_b = 112.0 * size * rng.uniform(0.94, 1.06)
    fat = rng.uniform(6.0, 20.0) * size
    wall_front, wall_back = fat + 10.0 * size, fat + 30.0 * size
    cav_b = body_b - (wall_front + wall_back) / 2
    cav_y = (wall_front - wall_back) / 2
    cav_a = body_a - fat - 12.0 * size
    height = 245.0 * lung_scale
    top = _Z_CENTRE_MM + fov_mm[0] / 2
    z_base = top - rng.uniform(8.0, 40.0) - height  # scanned from above the apices; tall lungs lose their bases
    return BodyPlan(
        cx=rng.uniform(-8.0, 8.0),
        cy=-24.0 + rng.uniform(-8.0, 8.0),
        body_a=body_a,
        body_b=body_b,
        fat=fat,
        cav_a=cav_a,
        cav_b=cav_b,
        cav_y=cav_y,
        z_base=z_base,
        height=height,
        mid_x=rng.uniform(2.0, 9.0),
        dome_right=rng.uniform(0.22, 0.32),
        dome_left=rng.uniform(0.16, 0.25),
        heart_scale=size * rng.uniform(0.9, 1.1),
        rib_pitch=26.0 * size,
        rib_phase=rng.uniform(0.0, 26.0),
        fissure_jitter=tuple(rng.uniform(-0.06, 0.06, 3)),  # type: ignore[arg-type]
        noise_sd=float(rng.uniform(10.0, 25.0)),
        padding=bool(rng.random() < 0.5),
    )


@dataclass
class Anatomy:
    """A normal chest: HU (float32, before blur and noise), lung labels and landmarks."""

    hu: np.ndarray
    lungs: np.ndarray  # uint8, RIGHT_LUNG / LEFT_LUNG
    grid: Grid
    plan: BodyPlan
    hila: dict[int, np.ndarray]  # lung label -> LPS (x, y, z) of its hilum


# --------------------------------------------------------------------------- helpers


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Unit-variance smooth random field (correlation ~ ``sigma_vox``) made cheaply.

    White noise on a grid coarser by about sigma/1.5, smoothed there, then brought back by
    nearest-neighbour repetition and a box filter (which together interpolate linearly).
    """
    steps = [max(1, int(s / 1.5)) for s in sigma_vox]
    coarse_shape = [n // st + 2 for n, st in zip(shape, steps, strict=False)]
    field = rng.standard_normal(coarse_shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, [s / st for s, st in zip(sigma_vox, steps, strict=False)], mode="wrap")
    field /= max(float(field.std()), 1e-6)
    for axis, step in enumerate(steps):
        if step > 1:
            field = np.repeat(field, step, axis=axis)
            field = ndimage.uniform_filter1d(field, step, axis=axis)
    return np.ascontiguousarray(field[tuple(slice(0, n) for n in shape)])


def box_axes(grid: Grid, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS z, y, x of the voxel centres inside ``box``, broadcastable."""
    z, y, x = grid.axes()
    return z[box[0]], y[:, box[1]], x[:, :, box[2]]


def draw_tubes(occupancy: np.ndarray, grid: Grid, segments: np.ndarray, *, scale: float = 1.0) -> None:
    """Rasterise capsules (x0,y0,z0,x1,y1,z1,r rows, LPS mm) into ``occupancy`` by maximum.

    The value is a partial-volume fraction: a ramp one voxel wide across the surface, scaled
    down for tubes thinner than a voxel, so thin vessels fade instead of vanishing.
    """
    if len(segments) == 0:
        return
    voxel = grid.inplane_mm
    z_axis, y_axis, x_axis = (axis.ravel().astype(float) for axis in grid.axes())
    start, end, radius = segments[:, :3], segments[:, 3:6], segments[:, 6] * scale
    pad = (radius + voxel)[:, None]
    lo = np.maximum(np.floor(grid.to_index(np.minimum(start, end) - pad)).astype(int), 0)
    hi = np.minimum(np.ceil(grid.to_index(np.maximum(start, end) + pad)).astype(int) + 1, grid.shape)
    peaks = np.minimum(1.0, np.pi * radius**2 / voxel**2)
    for i in np.flatnonzero(np.all(hi > lo, axis=1)):
        box = (slice(lo[i, 0], hi[i, 0]), slice(lo[i, 1], hi[i, 1]), slice(lo[i, 2], hi[i, 2]))
        x0, y0, z0 = start[i]
        dx, dy, dz = end[i] - start[i]
        z = z_axis[box[0], None, None] - z0
        y = y_axis[None, box[1], None] - y0
        x = x_axis[None, None, box[2]] - x0
        length2 = max(dx * dx + dy * dy + dz * dz, 1e-9)
        t = np.clip((x * dx + y * dy + z * dz) * (1.0 / length2), 0.0, 1.0)
        dist = np.sqrt((x - t * dx) ** 2 + (y - t * dy) ** 2 + (z - t * dz) ** 2)
        occ = np.clip((radius[i] - dist) * (1.0 / voxel) + 0.5, 0.0, 1.0) * peaks[i]
        view = occupancy[box]
        np.maximum(view, occ, out=view)


def branching_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    territory: np.ndarray,
    r0: float,
    r_min: float,
    reach: float = 0.5,
) -> np.ndarray:
    """A space-filling branching tree from ``root`` into ``territory`` points (LPS mm).

    Each branch heads for the centroid of its territory, which is then split in two across
    its widest axis; radii follow Murray's law (r^3 proportional to the territory served),
    so branches thin towards the periphery and reach every part of the lung.
    Returns rows (x0, y0, z0, x1, y1, z1, r).
    """
    segments: list[tuple[float, ...]] = []
    stack = [(np.asarray(root, dtype=float), territory, float(r0))]
    while stack:
        start, points, radius = stack.pop()
        target = points.mean(axis=0)
        terminal = len(points) < 3 or radius * 0.79 < r_min
        end = target if terminal else start + reach * (target - start)
        segments.append((*start, *end, radius))
        if terminal:
            continue
        axis = np.zeros(3)
        axis[int(np.argmax(points.var(axis=0)))] = 1.0
        axis += 0.5 * rng.standard_normal(3)
        side = (points - target) @ axis > 0
        for part in (points[side], points[~side]):
            if len(part):
                stack.append((end, part, radius * (len(part) / len(points)) ** (1 / 3)))
    return np.array(segments, dtype=float).reshape(-1, 7)


def sample_points(rng: np.random.Generator, grid: Grid, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` random LPS points (jittered voxel centres) inside a boolean mask."""
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return np.zeros((0, 3))
    picks = rng.choice(flat, size=min(n, flat.size), replace=False)
    zyx = np.stack(np.unravel_index(np.sort(picks), mask.shape), axis=-1).astype(float)
    zyx += rng.uniform(-0.5, 0.5, zyx.shape)
    return grid.to_mm(zyx)


# --------------------------------------------------------------------------- shapes


def _trunk_q(plan: BodyPlan, X: np.ndarray, Y: np.ndarray, shrink: float) -> np.ndarray:
    """Normalised radius of the trunk outline shrunk by ``shrink`` mm; flatter at the back."""
    a, b = plan.body_a - shrink, plan.body_b - shrink
    yn = np.abs(Y / b)
    return np.abs(X / a) ** 2 + np.where(Y > 0, yn**3.2, yn**2)


def _cavity_axes(plan: BodyPlan, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-depth of the rib cage at each height: narrower towards the inlet."""
    upper = np.clip((t - 0.35) / 0.65, 0.0, 1.2) ** 1.6
    return plan.cav_a * (1.0 - 0.3 * upper), plan.cav_b * (1.0 - 0.18 * upper)


def _spine_centre(plan: BodyPlan) -> tuple[float, float]:
    """Body-frame y of the vertebral body's centre and its radius."""
    radius = 17.0 * plan.body_b / 112.0
    return plan.cav_y + plan.cav_b - 0.7 * radius, radius


def _dome(plan: BodyPlan, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """LPS z of the diaphragm under each (y, x): two domes, the right one higher."""
    yn = (Y - plan.cav_y) / plan.cav_b
    slope = 14.0 * np.clip(0.5 - 0.5 * yn, 0.0, 1.0)  # the anterior recesses sit higher
    domes = []
    for side, h in ((-1.0, plan.dome_right), (1.0, plan.dome_left)):
        q = ((X - side * 0.4 * plan.cav_a) / (0.7 * plan.cav_a)) ** 2 + ((Y - plan.cav_y + 0.1 * plan.cav_b) / (0.95 * plan.cav_b)) ** 2
        domes.append(h * plan.height * np.clip(1.0 - q, 0.0, 1.0) ** 0.8)
    return plan.z_base + slope + np.maximum(domes[0], domes[1])


def _apex(plan: BodyPlan, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """LPS z of the lung top under each (y, x): one rounded cap per lung."""
    caps = []
    for side in (-1.0, 1.0):
        q = ((X - side * 0.45 * plan.cav_a) / (0.55 * plan.cav_a)) ** 2 + ((Y - plan.cav_y - 0.1 * plan.cav_b) / (0.85 * plan.cav_b)) ** 2
        caps.append(plan.height * (1.0 - 0.2 * q))
    return plan.z_base + np.maximum(caps[0], caps[1])


def _heart(plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Normalised radius of the heart: an ellipsoid left-anterior in the lower chest."""
    s = plan.heart_scale
    hx, hy, hz = plan.mid_x + 26.0 * s, plan.cav_y - 0.34 * plan.cav_b, plan.z_base + 0.26 * plan.height
    long_axis = (X - hx) * 0.77 - (Y - hy) * 0.64  # towards the left and the front
    short_axis = (X - hx) * 0.64 + (Y - hy) * 0.77
    return (long_axis / (64.0 * s)) ** 2 + (short_axis / (44.0 * s)) ** 2 + ((Z - hz) / (56.0 * s)) ** 2


def _upper_mediastinum_halfwidth(plan: BodyPlan, t: np.ndarray | float) -> np.ndarray | float:
    """Half-width of the vascular mediastinum: widest at the aortic arch and the hila."""
    return 8.0 + 30.0 * plan.heart_scale * np.exp(-(((t - 0.64) / 0.18) ** 2))


def _upper_mediastinum(plan: BodyPlan, X: np.ndarray, Y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Normalised radius of the vascular mediastinum above the heart (aortic arch, great vessels)."""
    width = _upper_mediastinum_halfwidth(plan, t)
    depth = 0.62 * plan.cav_b
    return ((X - plan.mid_x + 3.0) / width) ** 2 + ((Y - plan.cav_y + 0.12 * plan.cav_b) / depth) ** 2


def _great_vessels(plan: BodyPlan) -> np.ndarray:
    """Aorta, pulmonary trunk, vena cava and oesophagus as tube segments (LPS mm)."""
    s = plan.heart_scale
    spine_y, spine_r = _spine_centre(plan)
    zb, h, m, cy, cb = plan.z_base, plan.height, plan.mid_x, plan.cav_y, plan.cav_b
    desc = (m + 18.0 * s, spine_y - spine_r - 1.0)
    asc = (m - 6.0 * s, cy - 0.3 * cb)
    arch_z = zb + 0.72 * h
    rows = [
        (*asc, zb + 0.4 * h, *asc, arch_z, 14.0 * s),  # ascending aorta
        (*asc, arch_z, *desc, arch_z, 12.0 * s),  # arch
        (*desc, arch_z, *desc, zb - 80.0, 12.0 * s),  # descending aorta
        (m + 18.0 * s, cy - 0.45 * cb, zb + 0.4 * h, m + 12.0, cy - 0.1 * cb, zb + 0.6 * h, 13.0 * s),  # pulmonary trunk
        (m - 24.0 * s, cy - 0.2 * cb, zb + 0.42 * h, m - 22.0 * s, cy - 0.15 * cb, zb + 1.3 * h, 10.0 * s),  # superior vena cava
        (m + 2.0, spine_y - spine_r - 7.0, zb - 40.0, m + 2.0, spine_y - spine_r - 7.0, zb + 1.3 * h, 7.0),  # oesophagus
    ]
    seg = np.array(rows, dtype=float)
    seg[:, [0, 3]] += plan.cx
    seg[:, [1, 4]] += plan.cy
    return seg


def _aorta_zone(plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """The descending aorta and the arch with a fat margin, which the lungs wrap around."""
    (ax0, ay0, az, ax1, ay1, _, r_arch), (dx, dy, dz, _, _, _, r_desc) = _great_vessels(plan)[1:3]
    ax0, ax1, dx = ax0 - plan.cx, ax1 - plan.cx, dx - plan.cx
    ay0, ay1, dy = ay0 - plan.cy, ay1 - plan.cy, dy - plan.cy
    descending = ((X - dx) ** 2 + (Y - dy) ** 2 < (r_desc + 4.0) ** 2) & (Z < dz)
    d = np.array([ax1 - ax0, ay1 - ay0])
    s = np.clip(((X - ax0) * d[0] + (Y - ay0) * d[1]) / float(d @ d), 0.0, 1.0)
    arch = ((X - ax0 - s * d[0]) ** 2 + (Y - ay0 - s * d[1]) ** 2 + (Z - az) ** 2) < (r_arch + 5.0) ** 2
    return descending | arch


def _hila(plan: BodyPlan) -> dict[int, np.ndarray]:
    """Each lung's hilum: medial, mid-depth, a little above mid-height."""
    height = 0.56
    half = float(_upper_mediastinum_halfwidth(plan, height)) + 6.0
    z = plan.z_base + height * plan.height
    return {
        RIGHT_LUNG: plan.to_lps([plan.mid_x - 3.0 - half, plan.cav_y, z]),
        LEFT_LUNG: plan.to_lps([plan.mid_x - 3.0 + half, plan.cav_y, z]),
    }


# --------------------------------------------------------------------------- assembly


def build_anatomy(rng: np.random.Generator, grid: Grid, plan: BodyPlan) -> Anatomy:
    """Draw the whole normal chest of ``plan`` on ``grid``."""
    z, y, x = grid.axes()
    X, Y, Z = x - np.float32(plan.cx), y - np.float32(plan.cy), z
    t = plan.t_of(Z)
    a, b = _cavity_axes(plan, t)
    rho2 = (X / a) ** 2 + ((Y - np.float32(plan.cav_y)) / b) ** 2  # 1 on the inner rib surface
    hu = np.empty(grid.shape, dtype=np.float32)
    _chest_wall(hu, plan, X, Y, rho2)
    dome2d = _dome(plan, X, Y)
    _abdomen(hu, plan, X, Y, Z, rho2, dome2d)
    _ribs_and_sternum(hu, plan, X, Y, Z, rho2)
    _spine(hu, plan, X, Y, Z)
    _mediastinum(hu, grid, plan, X, Y, Z, dome2d)
    lungs = _lungs(plan, X, Y, Z, t, rho2, dome2d)
    texture = smooth_noise(rng, grid.shape, tuple(5.0 / s for s in grid.spacing))
    parenchyma = HU_LUNG + 22.0 * ((Y - plan.cav_y) / plan.cav_b) + 12.0 * texture  # denser posteriorly
    np.copyto(hu, parenchyma, where=lungs > 0)
    hila = _hila(plan)
    central_airways = _airways_and_vessels(rng, hu, grid, plan, lungs, hila)
    lungs[central_airways] = 0
    lungs = _keep_largest(lungs)
    _table(hu, plan, X, Y)
    return Anatomy(hu=hu, lungs=lungs, grid=grid, plan=plan, hila=hila)


def _chest_wall(hu: np.ndarray, plan: BodyPlan, X: np.ndarray, Y: np.ndarray, rho2: np.ndarray) -> None:
    """Air, subcutaneous fat and muscle around a cavity of mediastinal fat."""
    body = _trunk_q(plan, X, Y, 0.0) < 1.0
    muscle = _trunk_q(plan, X, Y, plan.fat) < 1.0
    slice2d = np.full(body.shape, HU_AIR, dtype=np.float32)
    slice2d[body] = HU_FAT
    slice2d[muscle] = HU_MUSCLE
    hu[...] = slice2d
    hu[rho2 < 1.0] = HU_MEDIASTINAL_FAT


def _abdomen(
    hu: np.ndarray, plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, rho2: np.ndarray, dome2d: np.ndarray
) -> None:
    """Liver under the right dome, stomach (with a gas bubble) and spleen under the left."""
    below = (Z < dome2d) & (rho2 < 1.0)
    shape2d = np.broadcast_shapes(X.shape, Y.shape)
    right = np.broadcast_to(X < plan.mid_x + 0.1 * plan.cav_a, shape2d)
    organ2d = np.where(right, HU_LIVER, HU_SOFT).astype(np.float32)
    spleen_y = plan.cav_y + 0.5 * plan.cav_b
    spleen = ((X - 0.68 * plan.cav_a) / (0.24 * plan.cav_a)) ** 2 + ((Y - spleen_y) / (0.36 * plan.cav_b)) ** 2 < 1.0
    organ2d[spleen] = HU_SPLEEN
    np.copyto(hu, np.broadcast_to(organ2d, hu.shape), where=below)
    stomach_y, stomach_z = plan.cav_y - 0.3 * plan.cav_b, plan.z_base + (plan.dome_left - 0.12) * plan.height
    stomach = (
        ((X - 0.42 * plan.cav_a) / (0.32 * plan.cav_a)) ** 2
        + ((Y - stomach_y) / (0.45 * plan.cav_b)) ** 2
        + ((Z - stomach_z) / 55.0) ** 2
    ) < 1.0
    stomach &= below
    hu[stomach] = HU_FLUID
    hu[stomach & (Y < stomach_y - 0.1 * plan.cav_b)] = HU_AIR  # gas rises to the front when supine


def _ribs_and_sternum(
    hu: np.ndarray, plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, rho2: np.ndarray
) -> None:
    """Ribs as oblique bony bands on the rib cage (lower in front), costal cartilage, sternum."""
    thick = 8.0 / (0.5 * (plan.cav_a + plan.cav_b))
    r_in, r_out = 1.012**2, (1.012 + thick) ** 2
    top = plan.z_base + plan.height + 8.0
    shell = (rho2 > r_in) & (rho2 < r_out) & (Z < top)
    kz, ky, kx = np.nonzero(shell)
    if kz.size:
        xs, ys, zs = X[0, 0, kx], Y[0, ky, 0], Z[kz, 0, 0]
        theta = np.arctan2(ys - plan.cav_y, xs * (plan.cav_b / plan.cav_a))
        drop = 85.0 * (1.0 - np.sin(theta)) / 2.0  # ribs descend towards the front
        radial = (np.sqrt(rho2[kz, ky, kx]) - 1.012) / thick  # 0..1 across the rib
        along = ((zs + drop - plan.z_base - plan.rib_phase) / plan.rib_pitch % 1.0) * (plan.rib_pitch / 10.0)
        inside = along < 1.0
        edge = np.maximum(np.abs(2 * radial - 1), np.abs(2 * along - 1))
        bone = np.where(edge > 0.7, HU_CORTEX, HU_MARROW)
        bone[(np.abs(xs) < 0.32 * plan.cav_a) & (ys < plan.cav_y)] = HU_CARTILAGE
        spine_gap = (np.abs(xs) < 24.0) & (ys > plan.cav_y)
        keep = inside & ~spine_gap
        hu[kz[keep], ky[keep], kx[keep]] = bone[keep]
    front = plan.cav_y - plan.cav_b
    sternum = (np.abs(X) < 15.0) & (Y > front - 13.0) & (Y < front - 1.0)
    core = (np.abs(X) < 11.0) & (Y > front - 10.0) & (Y < front - 4.0)
    levels = (Z > plan.z_base + 0.22 * plan.height) & (Z < plan.z_base + 0.95 * plan.height)
    hu[levels & sternum] = HU_CORTEX
    hu[levels & core] = HU_MARROW


def _spine(hu: np.ndarray, plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray) -> None:
    """Vertebral bodies with discs, the spinal canal and the posterior arch."""
    vy, vr = _spine_centre(plan)
    r2 = X**2 + (Y - vy) ** 2
    body = r2 < vr**2
    cortex = body & (r2 > (vr - 2.5) ** 2)
    canal_y, canal_r = vy + vr + 8.0, 7.5
    canal = X**2 + (Y - canal_y) ** 2 < canal_r**2
    arch = (X**2 + (Y - canal_y) ** 2 < (canal_r + 4.5) ** 2) & ~canal & (Y > vy + vr - 1.0)
    spinous = (np.abs(X) < 3.5) & (Y > canal_y) & (Y < canal_y + 36.0)
    transverse = (np.abs(X) < 27.0) & (np.abs(Y - canal_y + 1.0) < 4.0) & ~canal
    posterior = (arch | spinous | transverse) & (_trunk_q(plan, X, Y, plan.fat + 8.0) < 1.0)
    disc = ((Z - plan.z_base - plan.rib_phase) / plan.rib_pitch % 1.0) < 6.0 / plan.rib_pitch
    hu[np.broadcast_to(body, hu.shape)] = HU_MARROW
    hu[cortex & ~disc] = HU_CORTEX
    hu[body & disc] = HU_DISC
    hu[posterior & ~disc] = HU_CORTEX * 0.8
    hu[np.broadcast_to(canal, hu.shape)] = 25.0


def _mediastinum(
    hu: np.ndarray, grid: Grid, plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, dome2d: np.ndarray
) -> None:
    """Heart and great vessels (soft tissue) in mediastinal fat."""
    hu[(_heart(plan, X, Y, Z) < 1.0) & (Z >= dome2d - 10.0)] = HU_BLOOD
    occupancy = np.zeros(grid.shape, dtype=np.float32)
    draw_tubes(occupancy, grid, _great_vessels(plan))
    inside = (occupancy > 0) & (hu < 100.0) & (hu > -200.0)
    hu[inside] += occupancy[inside] * (HU_BLOOD - hu[inside])


def _lungs(
    plan: BodyPlan, X: np.ndarray, Y: np.ndarray, Z: np.ndarray, t: np.ndarray, rho2: np.ndarray, dome2d: np.ndarray
) -> np.ndarray:
    """Lung labels: the rib cage above the diaphragm and below the apices, minus the mediastinum."""
    vy, vr = _spine_centre(plan)
    spine_zone = ((X**2 + (Y - vy) ** 2) < (vr + 5.0) ** 2) | ((np.abs(X) < vr + 3.0) & (Y > vy))
    band = 6.0 + 6.0 * np.clip((Y - plan.cav_y) / plan.cav_b + 0.5, 0.0, 1.0)  # thin in front
    lung2d = ~spine_zone & (np.abs(X - plan.mid_x) > band)
    lung = (rho2 < 0.97) & lung2d & (Z > dome2d + 2.0) & (Z < _apex(plan, X, Y))
    lung &= _upper_mediastinum(plan, X, Y, t) > 1.0
    lung &= _heart(plan, X, Y, Z) > 1.15
    lung &= ~_aorta_zone(plan, X, Y, Z)
    labels = np.zeros(lung.shape, dtype=np.uint8)
    labels[lung] = LEFT_LUNG
    labels[lung & (X < plan.mid_x)] = RIGHT_LUNG
    return labels


def _keep_largest(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest connected piece of each lung (drops slivers cut off by shapes)."""
    pieces, count = ndimage.label(labels > 0)
    if count <= 2:
        return labels
    flat = pieces.ravel()
    sizes = np.bincount(flat, minlength=count + 1).astype(float)
    right = np.bincount(flat, weights=(labels.ravel() == RIGHT_LUNG), minlength=count + 1)
    keep = np.zeros(count + 1, dtype=bool)
    for side_share in (right, sizes - right):
        is_side = side_share * 2 > sizes
        is_side[0] = False
        if is_side.any():
            keep[int(np.argmax(np.where(is_side, sizes, -1.0)))] = True
    labels[~keep[pieces]] = 0
    return labels


def _airways_and_vessels(
    rng: np.random.Generator, hu: np.ndarray, grid: Grid, plan: BodyPlan, lungs: np.ndarray, hila: dict[int, np.ndarray]
) -> np.ndarray:
    """Pulmonary vessel and bronchial trees from the hila, trachea and main bronchi.

    Returns the trachea and main bronchi with their walls, which are not lung.
    """
    vessels = np.zeros(grid.shape, dtype=np.float32)
    walls = np.zeros(grid.shape, dtype=np.float32)
    lumen = np.zeros(grid.shape, dtype=np.float32)
    r_min = max(0.7, 0.4 * grid.inplane_mm)
    carina = plan.to_lps([plan.mid_x - 3.0, plan.cav_y + 0.02 * plan.cav_b, plan.z_base + 0.68 * plan.height])
    central = [np.array([[*carina, *(carina + [-2.0, -8.0, 400.0]), 8.5]])]
    bronchi = []
    for label in (RIGHT_LUNG, LEFT_LUNG):
        in_lung = lungs == label
        points = sample_points(rng, grid, in_lung, 1400)
        if len(points) < 10:
            continue
        for offset, r0 in ((np.array([0.0, -10.0, 6.0]), 5.5), (np.array([0.0, 8.0, -14.0]), 4.8)):
            draw_tubes(vessels, grid, branching_tree(rng, hila[label] + offset, points, r0, r_min))
        central.append(np.array([[*carina, *(hila[label] + [0.0, 0.0, 6.0 - 6.0 * label]), 6.0]]))
        bronchi.append(branching_tree(rng, hila[label], sample_points(rng, grid, in_lung, 60), 5.0, 2.0, reach=0.45))
    segments = np.concatenate(central + bronchi)
    draw_tubes(walls, grid, segments, scale=1.4)
    draw_tubes(lumen, grid, segments)
    hu += np.where(lungs > 0, vessels, 0.0) * (HU_VESSEL - hu)
    hu += walls * (HU_AIRWAY_WALL - hu) * (hu < HU_AIRWAY_WALL)
    hu += lumen * (HU_AIR - hu)
    central_occupancy = np.zeros(grid.shape, dtype=np.float32)
    draw_tubes(central_occupancy, grid, np.concatenate(central), scale=1.4)
    return central_occupancy > 0.3


def _table(hu: np.ndarray, plan: BodyPlan, X: np.ndarray, Y: np.ndarray) -> None:
    """A curved patient table under the back: carbon shell around a foam core."""
    top = plan.body_b + 3.0 - 0.0008 * X**2
    depth = Y - top
    width = np.abs(X) < 230.0
    shell = width & (((depth > 0) & (depth < 2.5)) | ((depth > 22.0) & (depth < 24.5)))
    core = width & (depth >= 2.5) & (depth <= 22.0)
    hu[np.broadcast_to(core, hu.shape)] = HU_TABLE_CORE
    hu[np.broadcast_to(shell, hu.shape)] = HU_TABLE_SHELL
