"""Parametric head and chest anatomy, evaluated on a voxel grid as a label volume.

Both phantoms are built from ellipsoids, elliptic cylinders and planes in an *anatomy frame*
(mm, x = patient left, y = posterior, z = superior, origin at the head centre / at the carina),
which is rotated (yaw about z, pitch about x, roll about y) and shifted into the scanner frame.
Each function returns labels [z, y, x] (ids from :mod:`phantoms.tissues`) and the landmark truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phantoms.tissues import NAME_TO_LABEL as L


def rotation_matrix(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """R = Rz(yaw) @ Rx(pitch) @ Ry(roll): anatomy frame -> scanner frame (LPS). Yaw turns the nose
    towards the patient's left, pitch tips the chin down (flexion, +), roll tilts the head towards the left shoulder."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(r), 0, np.sin(r)], [0, 1, 0], [-np.sin(r), 0, np.cos(r)]])
    return rz @ rx @ ry


@dataclass
class Grid:
    """Scanner-frame voxel grid: x/y centred on the isocentre (0, 0), z = slice centres (mm)."""

    n: int
    pixel_mm: float
    z: np.ndarray

    @property
    def xy(self) -> np.ndarray:
        return (np.arange(self.n) - (self.n - 1) / 2.0) * self.pixel_mm


def _frame_coords(grid: Grid, k: int, center, rot) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anatomy-frame coordinates (qx, qy, qz) of slice k: q = R^T (p - center)."""
    xs = grid.xy
    X, Y = np.meshgrid(xs, xs)  # [y, x]
    P = np.stack([X - center[0], Y - center[1], np.full_like(X, grid.z[k] - center[2])])
    Q = np.tensordot(rot.T, P, axes=1)
    return Q[0], Q[1], Q[2]


def _ell(q, c, a) -> np.ndarray:
    return ((q[0] - c[0]) / a[0]) ** 2 + ((q[1] - c[1]) / a[1]) ** 2 + ((q[2] - c[2]) / a[2]) ** 2 <= 1.0


def _cyl_z(q, c, a, z0, z1) -> np.ndarray:
    """Elliptic cylinder along the anatomy z axis between z0 and z1."""
    return (((q[0] - c[0]) / a[0]) ** 2 + ((q[1] - c[1]) / a[1]) ** 2 <= 1.0) & (q[2] >= z0) & (q[2] <= z1)


def ellipsoid_z_extent(axes, rot) -> float:
    """Half-extent along scanner z of an ellipsoid with semi-axes ``axes`` rotated by ``rot``."""
    return float(np.sqrt(np.sum((rot[2] * np.asarray(axes)) ** 2)))


# ------------------------------------------------------------------------------------------------
# head
# ------------------------------------------------------------------------------------------------


@dataclass
class HeadShape:
    scale: float          # 1.0 = adult head ~ 150 x 190 mm; 0.9-1.2 gives WED ~ 14-19 cm
    skull_mm: float       # skull thickness
    ventricle: float      # ventricle size factor

    @classmethod
    def random(cls, rng: np.random.Generator) -> "HeadShape":
        return cls(scale=float(rng.uniform(0.90, 1.20)), skull_mm=float(rng.uniform(5.0, 9.0)),
                   ventricle=float(rng.uniform(0.8, 1.4)))

    @property
    def skin_axes(self):
        return np.array([75.0, 95.0, 88.0]) * self.scale

    @property
    def skull_base_z(self) -> float:
        """Foramen magnum plane (anatomy frame z)."""
        return -0.45 * self.inner_axes[2]

    @property
    def inner_axes(self):
        return self.skin_axes - 5.0 - self.skull_mm

    @property
    def lens_centres(self):
        a = self.inner_axes
        return [np.array([s * 0.42 * a[0], -0.93 * a[1] - 14.0, -0.28 * a[2]]) for s in (-1, 1)]


def head_labels(grid: Grid, shape: HeadShape, center, rot) -> np.ndarray:
    s = shape
    skin = s.skin_axes
    outer = skin - 5.0
    inner = s.inner_axes
    zb = s.skull_base_z
    out = np.zeros((len(grid.z), grid.n, grid.n), dtype=np.uint8)
    lens = s.lens_centres
    for k in range(len(grid.z)):
        q = _frame_coords(grid, k, center, rot)
        lab = np.zeros(q[0].shape, dtype=np.uint8)
        above = q[2] >= zb - 12.0  # cranium incl. skull base plate
        # neck below the skull base: soft tissue with spine and spinal canal
        neck = _cyl_z(q, (0, 0.15 * skin[1], 0), (0.55 * skin[0], 0.55 * skin[1]), -400, zb)
        lab[neck] = L["muscle"]
        spine = _cyl_z(q, (0, 0.3 * skin[1], 0), (14, 14), -400, zb - 12)
        lab[spine] = L["cancellous_bone"]
        lab[_cyl_z(q, (0, 0.45 * skin[1], 0), (8, 8), -400, zb + 1)] = L["csf"]
        # face: anterior-inferior soft tissue block with orbits, globes, lenses, maxillary sinuses
        face = _ell(q, (0, -0.55 * skin[1], -0.45 * skin[2]), (0.62 * skin[0], 0.5 * skin[1], 0.5 * skin[2]))
        lab[face] = L["skin_soft_tissue"]
        for sx in (-1, 1):
            lab[_ell(q, (sx * 0.36 * skin[0], -0.62 * skin[1], -0.72 * skin[2]), (16, 18, 14)) & face] = L["sinus_air"]
        # cranium
        lab[_ell(q, (0, 0, 0), skin) & above] = L["skin_soft_tissue"]
        lab[_ell(q, (0, 0, 0), outer) & above] = L["cortical_bone"]
        cavity = _ell(q, (0, 0, 0), inner) & (q[2] >= zb)
        lab[cavity] = L["csf"]  # thin subarachnoid layer remains at the rim
        brain = _ell(q, (0, 0, 0), inner - 2.0) & (q[2] >= zb + 2.0)
        lab[brain] = L["grey_matter"]
        lab[_ell(q, (0, 0, 0.1 * inner[2]), inner * np.array([0.62, 0.62, 0.55]))] = L["white_matter"]
        # posterior fossa / cerebellum
        lab[_ell(q, (0, 0.45 * inner[1], 0.78 * zb), (0.6 * inner[0], 0.38 * inner[1], 0.35 * inner[2])) & brain] = L["cerebellum"]
        # lateral ventricles
        v = s.ventricle
        for sx in (-1, 1):
            lab[_ell(q, (sx * 9 * v, 5, 0.12 * inner[2]), (6 * v, 28 * v, 11 * v))] = L["csf"]
        # skull base plate and foramen magnum
        plate = _ell(q, (0, 0, 0), outer) & (q[2] < zb) & (q[2] >= zb - 10.0)
        lab[plate] = L["cortical_bone"]
        fm = _cyl_z(q, (0, 0.3 * inner[1], 0), (15, 18), zb - 12, zb + 0.5)
        lab[fm & (plate | cavity)] = L["csf"]
        # external auditory meatus: air canals through the temporal bone at skull-base level
        for sx in (-1, 1):
            eam = _cyl_z(q, (sx * (outer[0] - 4), 0.05 * skin[1], 0), (10, 4), zb + 2, zb + 10)
            lab[eam & ~_ell(q, (0, 0, 0), inner + 3.0)] = L["sinus_air"]  # petrous bone keeps the ring closed
        # orbits with globes and lenses (in front of the cranium)
        for sx, lc in zip((-1, 1), lens):
            gc = lc + np.array([0, 11.0, 0])
            orbit = _ell(q, gc + np.array([0, 4, 0]), (19, 22, 17))
            lab[orbit & ~_ell(q, (0, 0, 0), outer)] = L["fat"]  # orbital roof (skull) stays intact
            lab[_ell(q, gc, (12, 12, 12)) & ~_ell(q, (0, 0, 0), outer)] = L["eye_globe"]
            lab[_ell(q, lc, (4.5, 2.2, 4.5))] = L["lens"]
        out[k] = lab
    return out


# ------------------------------------------------------------------------------------------------
# chest
# ------------------------------------------------------------------------------------------------


ARMS_DOWN_MAX_HALF_WIDTH = 245.0  # mm: trunk half-width + arm (100 mm) must stay inside a 500 mm field


@dataclass
class ChestShape:
    half_width: float     # body semi-axis LR (mm)
    half_depth: float     # body semi-axis AP (mm)
    fat_mm: float         # subcutaneous fat thickness
    lung_length: float    # apex to costophrenic angle (mm)
    arms_up: bool
    #: gas pockets below the diaphragm (stomach fundus, colon flexures): ((x, y, z), (ax, ay, az)) ellipsoids in the
    #: anatomy frame (mm), drawn by :func:`abdominal_gas`; empty = a gas-free upper abdomen
    gas: tuple = ()

    @classmethod
    def random(cls, rng: np.random.Generator, arms_up: bool | None = None) -> "ChestShape":
        w = float(rng.uniform(140.0, 235.0))  # WED ~ 21-38 cm
        up = bool(rng.random() < 0.7) if arms_up is None else bool(arms_up)
        if w + 100.0 > ARMS_DOWN_MAX_HALF_WIDTH:  # arms beside a wide trunk would leave the 500 mm field
            up = True
        return cls(half_width=w, half_depth=w * float(rng.uniform(0.62, 0.75)), fat_mm=float(rng.uniform(6, 30)),
                   lung_length=float(rng.uniform(220, 290)), arms_up=up)

    @property
    def apex_z(self) -> float:
        return 0.3 * self.lung_length

    @property
    def base_z(self) -> float:
        """Costophrenic angles (lowest lung point), anatomy frame z."""
        return -0.7 * self.lung_length

    @property
    def carina_z(self) -> float:
        return 0.0

    def diaphragm_z(self, x, y):
        """Anatomy-frame z (mm) of the diaphragm under the point (x, y): the lung floor ``base + 90 (1 - r^2)``
        of the lung column above it (r^2 clipped to 1: the costophrenic level outside the columns), the higher of
        the two sides."""
        out = None
        for sx in (-1, 1):
            r2 = ((x - sx * 0.46 * self.half_width) / (0.36 * self.half_width)) ** 2 + (
                (y - 0.05 * self.half_depth) / (0.72 * self.half_depth)) ** 2
            z = self.base_z + 90.0 * (1.0 - np.minimum(r2, 1.0))
            out = z if out is None else np.maximum(out, z)
        return out


def abdominal_gas(rng: np.random.Generator, shape: ChestShape) -> tuple:
    """Random gas pockets of the upper abdomen for :class:`ChestShape` ``gas``: the stomach's gas cap under the left
    dome (3 of 4 patients; anterior, as in a supine patient) and 0-5 colon segments (hepatic and splenic flexures,
    transverse colon) from 40 mm below the costophrenic level to 50 mm above it. Both are at the lung bases'
    level in an axial slice: the real confounder of lung segmentation there (on the shared real abdomen CT the
    chest network and the classical fallback both called colon gas "lung")."""
    a, b, base = shape.half_width, shape.half_depth, shape.base_z
    out = []
    if rng.random() < 0.75:
        c = (float(rng.uniform(0.25, 0.45)) * a, float(rng.uniform(-0.35, -0.05)) * b, base + float(rng.uniform(30, 70)))
        out.append((c, (float(rng.uniform(20, 45)), float(rng.uniform(15, 35)), float(rng.uniform(10, 25)))))
    for _ in range(int(rng.integers(0, 6))):
        c = (float(rng.choice([-1, 1]) * rng.uniform(0.15, 0.7)) * a, float(rng.uniform(-0.6, 0.4)) * b,
             base + float(rng.uniform(-40, 50)))
        out.append((c, tuple(float(v) for v in rng.uniform((10, 8, 8), (30, 25, 25)))))
    return tuple(out)


def patient_table(grid: Grid, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU image of the patient table under a supine patient (NaN where there is none): a foam mattress the back
    sinks into, on a curved carbon-fibre sandwich top (two thin shells around a foam core), the same on every slice.
    Not anatomy: its voxels keep label 0 (air, outside the patient) in the phantom's labels, so a segmenter trained on
    these scans learns that the table and the air pockets in and around the mattress are outside the body.

    Geometry (mm, scanner frame, y posterior): the top's upper surface is ``y_top(x) = y0 - (x - xc)^2 / 2R`` with
    R 500-1500 mm; the mattress (30-60 mm, -900..-600 HU: polyurethane foam with its cover) lies on it, the back sunk
    5-20 mm into it; the top is two 2-4 mm shells of 100-400 HU (carbon fibre, partial-volumed) around a 10-30 mm foam
    core (-980..-900 HU). Values are drawn from ``rng``. Why: on the shared real abdomen CT the chest network, which
    had never seen a table, called the air layers of the mattress "lung" (946 voxels in one component)."""
    xs = grid.xy
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    out = np.full(body.shape, np.nan, dtype=np.float32)
    if rows.size == 0:
        return out
    y_back = float(xs[rows[-1]]) + 0.5 * grid.pixel_mm
    pad_t, sink = float(rng.uniform(30, 60)), float(rng.uniform(5, 20))
    pad_hu, shell_hu = float(rng.uniform(-900, -600)), float(rng.uniform(100, 400))
    core_hu = float(rng.uniform(-980, -900))
    shell_t, core_t = float(rng.uniform(2, 4)), float(rng.uniform(10, 30))
    radius, xc = float(rng.uniform(500, 1500)), float(rng.uniform(-10, 10))
    half_w_pad, half_w_top = float(rng.uniform(200, 240)), float(rng.uniform(220, 260))
    X, Y = np.meshgrid(xs, xs)  # [y, x]
    y_top = y_back + pad_t - sink - (X - xc) ** 2 / (2.0 * radius)
    d = Y - y_top  # > 0 below the top's upper surface
    plane = np.full(X.shape, np.nan, dtype=np.float32)
    plane[(d >= -pad_t) & (d < 0) & (np.abs(X - xc) < half_w_pad)] = pad_hu
    top = np.abs(X - xc) < half_w_top
    plane[top & (d >= 0) & (d < shell_t)] = shell_hu
    plane[top & (d >= shell_t) & (d < shell_t + core_t)] = core_hu
    plane[top & (d >= shell_t + core_t) & (d < 2 * shell_t + core_t)] = shell_hu
    out[:] = plane
    out[body] = np.nan  # the patient lies on, not in, the mattress
    return out


def chest_labels(grid: Grid, shape: ChestShape, center, rot) -> np.ndarray:
    s = shape
    a, b = s.half_width, s.half_depth
    out = np.zeros((len(grid.z), grid.n, grid.n), dtype=np.uint8)
    lung_ax = np.array([0.36 * a, 0.72 * b])
    for k in range(len(grid.z)):
        q = _frame_coords(grid, k, center, rot)
        lab = np.zeros(q[0].shape, dtype=np.uint8)
        zq = q[2]
        # neck narrower above the apices
        neck_f = np.clip(1.0 - (zq - (s.apex_z + 10)) / 80.0, 0.45, 1.0)
        body = ((q[0] / (a * neck_f)) ** 2 + (q[1] / (b * np.clip(neck_f, 0.7, 1))) ** 2 <= 1.0) & (zq > -600) & (zq < 400)
        lab[body] = L["fat"]
        muscle = ((q[0] / (a * neck_f - s.fat_mm)) ** 2 + (q[1] / (b * np.clip(neck_f, 0.7, 1) - s.fat_mm)) ** 2 <= 1.0) & body
        lab[muscle] = L["muscle"]
        # ribs: elliptic bone rings every 25 mm, 9 mm thick, missing anteriorly near the sternum
        ring_o = ((q[0] / (a - s.fat_mm - 8)) ** 2 + (q[1] / (b - s.fat_mm - 8)) ** 2 <= 1.0)
        ring_i = ((q[0] / (a - s.fat_mm - 17)) ** 2 + (q[1] / (b - s.fat_mm - 17)) ** 2 <= 1.0)
        rib_z = (np.mod(zq - 5.0, 25.0) < 9.0) & (zq < s.apex_z + 5) & (zq > s.base_z - 40)
        lab[ring_o & ~ring_i & rib_z & (q[1] > -0.55 * b) & muscle] = L["cortical_bone"]
        # liver / abdomen below the diaphragm
        lab[ring_i & (zq < -0.35 * s.lung_length)] = L["liver"]
        if s.gas:
            # bowel gas inside the ribs, below the diaphragm (kept >= GAS_LUNG_GAP_MM from the lungs in 3-D below)
            below = ring_i & (zq < s.diaphragm_z(q[0], q[1]) - GAS_LUNG_GAP_MM)
            for c, ax in s.gas:
                lab[below & _ell(q, c, ax)] = L["bowel_gas"]
        # lungs: elliptic columns with a dome at the apex and a diaphragm dome at the base
        for sx in (-1, 1):
            cx = sx * 0.46 * a
            r2 = ((q[0] - cx) / lung_ax[0]) ** 2 + ((q[1] - 0.05 * b) / lung_ax[1]) ** 2
            top = s.apex_z - 60.0 * r2  # apex dome
            # diaphragm dome: highest medially, costophrenic angle laterally/posteriorly
            bottom = s.base_z + 90.0 * (1.0 - r2)
            lung = (r2 <= 1.0) & (zq <= top) & (zq >= bottom)
            lab[lung] = L["lung"]
        # mediastinum: heart (left-anterior), aorta, trachea, spine
        lab[_ell(q, (0.15 * a, -0.2 * b, -0.3 * s.lung_length), (0.3 * a, 0.42 * b, 0.22 * s.lung_length))] = L["heart_blood"]
        lab[_cyl_z(q, (0.08 * a, 0.35 * b, 0), (14, 14), -0.8 * s.lung_length, 0.05 * s.lung_length)] = L["aorta"]
        lab[_cyl_z(q, (0.02 * a, -0.25 * b, 0), (15, 15), 0.0, 0.05 * s.lung_length)] = L["aorta"]
        lab[_cyl_z(q, (0, -0.15 * b, 0), (9, 9), s.carina_z, 400)] = L["airway"]
        for sx in (-1, 1):  # main bronchi, short oblique segments approximated by steps
            for j in range(4):
                lab[_cyl_z(q, (sx * (8 + 8 * j), -0.1 * b, 0), (6, 6), s.carina_z - 10 * (j + 1), s.carina_z - 10 * j)] = L["airway"]
        lab[_cyl_z(q, (0, 0.62 * b, 0), (19, 16), -600, 400)] = L["cancellous_bone"]
        lab[_cyl_z(q, (0, 0.86 * b, 0), (8, 7), -600, 400)] = L["csf"]
        # arms down: an arm beside each flank (soft tissue with a humerus)
        if not s.arms_up:
            for sx in (-1, 1):
                arm = _cyl_z(q, (sx * (a + 55), 0, 0), (42, 45), -400, 150)
                lab[arm] = L["muscle"]
                lab[_cyl_z(q, (sx * (a + 55), 0, 0), (11, 11), -400, 150)] = L["cortical_bone"]
        out[k] = lab
    if s.gas:
        _keep_gas_off_lungs(out, grid)
    return out


#: diaphragm and soft tissue (mm) between bowel gas and lung: the dome is steep at its rim, where a vertical margin
#: alone leaves gas beside the lung
GAS_LUNG_GAP_MM = 8.0


def _keep_gas_off_lungs(labels: np.ndarray, grid: Grid) -> None:
    """Gas voxels closer than GAS_LUNG_GAP_MM to a lung voxel (3-D distance) become liver, in place; the distance
    transform runs on the gas's bounding box only."""
    from scipy import ndimage as ndi

    gas = labels == L["bowel_gas"]
    if not gas.any():
        return
    dz = float(grid.z[1] - grid.z[0]) if len(grid.z) > 1 else GAS_LUNG_GAP_MM
    step = (dz, grid.pixel_mm, grid.pixel_mm)
    idx = np.nonzero(gas)
    sl = tuple(slice(max(int(i.min()) - int(np.ceil(GAS_LUNG_GAP_MM / d)), 0),
                     int(i.max()) + int(np.ceil(GAS_LUNG_GAP_MM / d)) + 1) for i, d in zip(idx, step))
    sub = labels[sl]
    lung = sub == L["lung"]
    if lung.any():
        near = ndi.distance_transform_edt(~lung, sampling=step) < GAS_LUNG_GAP_MM
        sub[near & (sub == L["bowel_gas"])] = L["liver"]


def add_lung_vessels(labels: np.ndarray, rng: np.random.Generator, n: int = 60) -> None:
    """Sprinkle short random vessel segments (40 HU, 2-4 mm) inside the lungs, in place."""
    lung = labels == L["lung"]
    if not lung.any():
        return
    zz, yy, xx = np.nonzero(lung)
    idx = rng.choice(zz.size, size=min(n, zz.size), replace=False)
    for i in idx:
        z0, y0, x0 = zz[i], yy[i], xx[i]
        dy, dx = rng.normal(size=2)
        length = int(rng.integers(6, 20))
        for t in range(length):
            y, x = int(y0 + dy * t), int(x0 + dx * t)
            if 0 <= y < labels.shape[1] - 1 and 0 <= x < labels.shape[2] - 1 and lung[z0, y, x]:
                labels[z0, y : y + 2, x : x + 2] = np.where(lung[z0, y : y + 2, x : x + 2], L["vessel"], labels[z0, y : y + 2, x : x + 2])
