"""Render one field of view of MCF-7-like cells: DNA, microtubule and F-actin signal per pixel.

Cells are placed, given per-cell shapes and states drawn around the well's population parameters
(demo_biology.DMSO_POPULATION), and tessellated: each pixel belongs to the cell with the smallest
elliptical distance, so touching cells share a border. Every stain is then an analytic function of
the pixel's coordinates in its cell's frame, evaluated for all pixels at once:

- DAPI: dome-shaped nuclei with granular chromatin; a second nucleus in multinucleate cells;
  condensed chromatin in mitotic cells (metaphase plate, rosette around a monopolar spindle, or
  scattered chromosomes without spindle); fragments in apoptotic cells.
- Tubulin: diffuse cytoplasm, curved microtubules radiating from the centrosome, thick bundles and
  a peripheral ring when stabilised, spindle asters in mitotic cells.
- Actin: cortical ring, stress fibres along the cell axis, diffuse cytoplasm, bright aggregates.

Values are expected photon counts before the microscope (demo_microscope) blurs and digitises them.
"""

from __future__ import annotations

import cv2
import numpy as np

CELL_RADIUS = 20.0  # px, semi-major axis of a DMSO cell (BBBC021 scale, 20x objective)
NUCLEUS_RADIUS = 9.0  # px
MAX_POLES = 4
ACTIVE_DISTANCE = 1.4  # elliptical distance from a cell centre beyond which no stain reaches

# Peak counts of each structure at parameter value 1.
NUCLEUS_COUNTS = 4200.0
TUBULIN_DIFFUSE_COUNTS = 700.0
FILAMENT_COUNTS = 1900.0
BUNDLE_COUNTS = 3200.0
CENTROSOME_COUNTS = 3000.0
POLE_COUNTS = 5500.0
ACTIN_DIFFUSE_COUNTS = 450.0
CORTEX_COUNTS = 2200.0
FIBRE_COUNTS = 1500.0
PUNCTUM_COUNTS = 7000.0

# Chromatin layouts
INTERPHASE, METAPHASE, ROSETTE, SCATTERED = 0, 1, 2, 3


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter with mirrored borders (OpenCV: several times faster than scipy here)."""
    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation (texture source).

    Wide correlations are drawn on a coarser grid and interpolated up: same look, a fraction
    of the filtering time."""
    step = max(1, int(sigma))
    coarse = (shape[0] // step + 2, shape[1] // step + 2)
    field = gaussian_blur(rng.standard_normal(coarse, dtype=np.float32), sigma / step)
    if step > 1:
        upsampled = (coarse[1] * step, coarse[0] * step)  # (width, height) for OpenCV
        field = cv2.resize(field, upsampled, interpolation=cv2.INTER_LINEAR)
    field = field[: shape[0], : shape[1]]
    return field / max(float(field.std()), 1e-6)


def _place_cells(
    n: int, shape: tuple[int, int], clustering: float, spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Cell centres (n' <= n, 2): uniform or around islands, thinned to a minimum spacing."""
    height, width = shape
    margin = 0.5 * CELL_RADIUS
    n_candidates = 6 * n + 10
    uniform = rng.uniform((-margin, -margin), (height + margin, width + margin), (n_candidates, 2))
    n_islands = max(1, round(height * width / 40000))
    islands = rng.uniform((0, 0), (height, width), (n_islands, 2))
    near_island = islands[rng.integers(n_islands, size=n_candidates)] + rng.normal(
        0, 1.6 * CELL_RADIUS, (n_candidates, 2)
    )
    clustered = rng.random(n_candidates) < clustering
    candidates = np.where(clustered[:, None], near_island, uniform)
    kept = np.empty((n, 2))
    n_kept = 0
    for point in candidates:  # bounded by n_candidates
        if n_kept == n:
            break
        if n_kept == 0 or np.min(np.sum((kept[:n_kept] - point) ** 2, axis=1)) >= spacing**2:
            kept[n_kept] = point
            n_kept += 1
    return kept[:n_kept]


def _cells(
    population: dict[str, float],
    shape: tuple[int, int],
    cells_per_pixel: float,
    rng: np.random.Generator,
) -> dict:
    """Per-cell attributes (arrays of length n) drawn around the population parameters."""
    p = population
    n_target = max(1, rng.poisson(cells_per_pixel * shape[0] * shape[1] * p["density"]))
    spacing = 0.85 * CELL_RADIUS * p["cell_size"] * (1.0 - 0.3 * p["clustering"])
    centres = _place_cells(n_target, shape, p["clustering"], spacing, rng)
    n = len(centres)

    state = rng.random(n)
    mitotic = state < p["mitotic"]
    apoptotic = (state >= p["mitotic"]) & (state < p["mitotic"] + p["apoptotic"])
    interphase = ~(mitotic | apoptotic)
    interphase_share = max(1e-6, 1 - p["mitotic"] - p["apoptotic"])
    multinucleate = interphase & (rng.random(n) < p["multinucleate"] / interphase_share)

    size = CELL_RADIUS * p["cell_size"] * rng.lognormal(0, 0.15, n)
    elongation = np.maximum(1.0, p["elongation"] * rng.lognormal(0, 0.12, n))
    size = np.where(multinucleate, size * 1.25, size)
    rounded = 0.62 * CELL_RADIUS * np.sqrt(p["cell_size"]) * rng.lognormal(0, 0.08, n)
    size = np.where(mitotic, rounded, size)
    size = np.where(apoptotic, 0.7 * size, size)
    elongation = np.where(mitotic | apoptotic, 1.0 + 0.1 * rng.random(n), elongation)
    semi_major = size * np.sqrt(elongation)
    semi_minor = size / np.sqrt(elongation)
    angle = rng.uniform(0, np.pi, n)

    nucleus = NUCLEUS_RADIUS * p["nucleus_size"] * rng.lognormal(0, 0.1, n)
    nucleus = np.minimum(nucleus, 0.8 * semi_minor + 2.0)
    nucleus_elongation = rng.lognormal(0.15, 0.08, n)
    nucleus_a = nucleus * np.sqrt(nucleus_elongation)
    nucleus_b = nucleus / np.sqrt(nucleus_elongation)
    poles = np.clip(np.rint(p["spindle_poles"] + rng.normal(0, 0.45, n)), 0, MAX_POLES).astype(int)
    chromatin = np.full(n, INTERPHASE)
    chromatin[mitotic] = np.select(
        [poles[mitotic] == 2, poles[mitotic] == 1], [METAPHASE, ROSETTE], SCATTERED
    )
    chromatin[apoptotic] = SCATTERED
    # metaphase plate: a bar across the spindle axis (the cell's u axis)
    nucleus_a = np.where(chromatin == METAPHASE, 0.3 * nucleus, nucleus_a)
    nucleus_b = np.where(chromatin == METAPHASE, 1.1 * nucleus, nucleus_b)
    nucleus_a = np.where(chromatin == ROSETTE, 1.05 * nucleus, nucleus_a)
    nucleus_b = np.where(chromatin == ROSETTE, 1.05 * nucleus, nucleus_b)
    scattered = chromatin == SCATTERED
    nucleus_a = np.where(scattered, np.where(mitotic, 1.15, 0.9) * nucleus, nucleus_a)
    nucleus_b = np.where(scattered, np.where(mitotic, 1.15, 0.9) * nucleus, nucleus_b)
    brightness = p["nucleus_brightness"] * rng.lognormal(0, 0.15, n)
    brightness = brightness * np.select([mitotic, apoptotic], [2.1, 1.8], 1.0)
    # nucleus centre(s) in the cell frame: off-centre along the long axis; two for multinucleate
    room = np.maximum(semi_major - nucleus_a, 0)
    offset = rng.uniform(-0.3, 0.3, n) * room
    offset = np.where(mitotic | apoptotic | multinucleate, 0.0, offset)
    split = np.where(multinucleate, 0.95 * nucleus_a, 0.0)

    # centrosome beside the nucleus; mitotic poles around the cell centre
    side = rng.uniform(0, 2 * np.pi, n)
    centrosome = np.stack(
        [offset + 1.1 * nucleus_a * np.cos(side), 1.1 * nucleus_b * np.sin(side)], axis=1
    )
    pole_uv = np.zeros((n, MAX_POLES, 2))
    pole_weight = np.zeros((n, MAX_POLES))
    pole_angles = np.arange(MAX_POLES)[None, :] * 2 * np.pi / np.maximum(poles, 1)[:, None]
    pole_radius = np.where(poles == 1, 0.0, 0.55 * semi_major)[:, None]
    pole_uv[..., 0] = pole_radius * np.cos(pole_angles)
    pole_uv[..., 1] = pole_radius * np.sin(pole_angles)
    pole_weight[np.arange(MAX_POLES)[None, :] < poles[:, None]] = 1.0
    pole_weight[~mitotic] = 0.0

    def jitter(value: float, sigma: float = 0.15) -> np.ndarray:
        return value * rng.lognormal(0, sigma, n)

    return {
        "n": n,
        "centre": centres,
        "angle": angle,
        "semi_major": semi_major,
        "semi_minor": semi_minor,
        "harmonics": rng.uniform(0, 0.15, (n, 2)) * np.where(mitotic, 0.2, 1.0)[:, None],
        "harmonic_phase": rng.uniform(0, 2 * np.pi, (n, 2)),
        "mitotic": mitotic,
        "chromatin": chromatin,
        "nucleus_a": nucleus_a,
        "nucleus_b": nucleus_b,
        "nucleus_offset": offset,
        "nucleus_split": split,
        "brightness": brightness,
        "texture": np.where(scattered, 0.6, p["chromatin_texture"]) * rng.lognormal(0, 0.2, n),
        "centrosome": centrosome,
        "pole_uv": pole_uv,
        "pole_weight": pole_weight,
        "n_filaments": rng.integers(14, 24, n),
        "n_bundles": rng.integers(5, 9, n),
        "filament_phase": rng.uniform(0, 2 * np.pi, n),
        "curl": rng.normal(0, 0.5, n),
        "tubulin_diffuse": jitter(p["tubulin_diffuse"]) * np.where(mitotic, 1.6, 1.0),
        "tubulin_filaments": jitter(p["tubulin_filaments"])
        * np.where(mitotic | apoptotic, 0.15, 1.0),
        "tubulin_bundles": jitter(p["tubulin_bundles"], 0.25) * np.where(mitotic, 0.2, 1.0),
        "tubulin_centrosome": jitter(p["tubulin_centrosome"], 0.25) * np.where(mitotic, 0.0, 1.0),
        "actin_diffuse": jitter(p["actin_diffuse"]),
        "actin_cortex": jitter(p["actin_cortex"]) * np.where(mitotic, 1.5, 1.0),
        "actin_fibres": jitter(p["actin_fibres"], 0.25) * np.where(mitotic | apoptotic, 0.0, 1.0),
        "fibre_phase": rng.uniform(0, 2 * np.pi, n),
        "n_puncta": rng.poisson(10 * p["actin_puncta"], n),
    }


def _tessellate(cells: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label of the nearest cell per pixel (elliptical distance) and that distance (inf: none)."""
    distance = np.full(shape, np.inf, dtype=np.float32)
    label = np.zeros(shape, dtype=np.intp)
    cos, sin = np.cos(cells["angle"]), np.sin(cells["angle"])
    for i in range(cells["n"]):  # one bounding box per cell
        cy, cx = cells["centre"][i]
        reach = 1.5 * cells["semi_major"][i]
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, shape[0])
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        u = (dx * cos[i] + dy * sin[i]) / cells["semi_major"][i]
        v = (dy * cos[i] - dx * sin[i]) / cells["semi_minor"][i]
        rho = np.sqrt(u * u + v * v)
        box = distance[y0:y1, x0:x1]
        closer = rho < box
        box[closer] = rho[closer]
        label[y0:y1, x0:x1][closer] = i
    return label, distance


def _ridges(angle: np.ndarray, sharpness: float) -> np.ndarray:
    """Periodic thin ridges from a phase: 1 on the ridge, falling to 0 between ridges."""
    return (0.5 + 0.5 * np.cos(angle)) ** sharpness


def render_field(
    population: dict[str, float],
    shape: tuple[int, int],
    cells_per_pixel: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Expected counts per pixel for the DAPI, Tubulin and Actin stains of one field of view."""
    cells = _cells(population, shape, cells_per_pixel, rng)
    label, distance = _tessellate(cells, shape)
    # Only pixels near a cell carry stain: compute on those (flat indices), the rest stays 0.
    active = np.flatnonzero(distance < ACTIVE_DISTANCE)
    owner = label.ravel()[active]
    y, x = (coordinate.astype(np.float32) for coordinate in np.divmod(active, shape[1]))

    def per_pixel(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)[owner]

    def noise(sigma: float) -> np.ndarray:
        return _smooth_noise(rng, shape, sigma).ravel()[active]

    cy, cx = per_pixel(cells["centre"][:, 0]), per_pixel(cells["centre"][:, 1])
    cos, sin = per_pixel(np.cos(cells["angle"])), per_pixel(np.sin(cells["angle"]))
    # pixel coordinates in the cell's frame (u along the long axis)
    u = (x - cx) * cos + (y - cy) * sin
    v = (y - cy) * cos - (x - cx) * sin
    theta = np.arctan2(v / per_pixel(cells["semi_minor"]), u / per_pixel(cells["semi_major"]))
    harm, phase = cells["harmonics"], cells["harmonic_phase"]
    edge = 1.0 + per_pixel(harm[:, 0]) * np.cos(2 * theta + per_pixel(phase[:, 0]))
    edge += per_pixel(harm[:, 1]) * np.cos(3 * theta + per_pixel(phase[:, 1]))
    rho = distance.ravel()[active] / edge + 0.05 * noise(2.5)  # irregular membrane
    body = np.clip((1.0 - rho) / 0.08 + 0.5, 0.0, 1.0)

    # ---------------------------------------------------------------- DAPI
    nucleus_a, nucleus_b = per_pixel(cells["nucleus_a"]), per_pixel(cells["nucleus_b"])
    un = u - per_pixel(cells["nucleus_offset"])
    split = per_pixel(cells["nucleus_split"])
    rho_n = np.minimum(
        np.hypot((un - split) / nucleus_a, v / nucleus_b),
        np.hypot((un + split) / nucleus_a, v / nucleus_b),
    )
    granules, fragments = noise(1.0), noise(1.6)
    dome = np.sqrt(np.clip(1.0 - rho_n**2, 0.0, 1.0))
    rosette = np.exp(-(((rho_n - 0.7) / 0.22) ** 2)) * (rho_n < 1.1)
    scattered = (rho_n < 1.0) * np.clip(fragments - 0.4, 0.0, 1.5)
    chromatin = per_pixel(cells["chromatin"])
    profile = np.select([chromatin == ROSETTE, chromatin == SCATTERED], [rosette, scattered], dome)
    dapi = NUCLEUS_COUNTS * per_pixel(cells["brightness"]) * profile
    dapi *= np.clip(1.0 + per_pixel(cells["texture"]) * granules, 0.0, None)

    # ---------------------------------------------------------------- Tubulin
    breaks = np.clip(0.55 + 0.35 * noise(2.5), 0.0, 1.0)
    du = u - per_pixel(cells["centrosome"][:, 0])
    dv = v - per_pixel(cells["centrosome"][:, 1])
    radius = np.hypot(du, dv)
    wander = 0.08 * noise(5.0)  # microtubules are not straight
    bearing = np.arctan2(dv, du) + per_pixel(cells["curl"]) * radius / CELL_RADIUS + wander
    filament_phase = per_pixel(cells["filament_phase"])
    filaments = _ridges(per_pixel(cells["n_filaments"]) * bearing + filament_phase, 10.0)
    filaments *= 1.0 - np.exp(-((radius / 4.0) ** 2))  # lines merge into the centrosome
    bundles = _ridges(per_pixel(cells["n_bundles"]) * bearing + filament_phase, 3.0)
    bundles += 1.2 * np.exp(-(((rho - 0.82) / 0.08) ** 2))  # peripheral bundles
    centrosome_strength = per_pixel(cells["tubulin_centrosome"])
    centrosome_width = 2.0 + 1.5 * np.clip(centrosome_strength - 1.0, 0.0, None)  # aggresome grows
    denser_inside = 0.55 + 0.45 * np.clip(1 - rho, 0, 1)
    tubulin = TUBULIN_DIFFUSE_COUNTS * per_pixel(cells["tubulin_diffuse"]) * denser_inside
    tubulin += FILAMENT_COUNTS * per_pixel(cells["tubulin_filaments"]) * filaments * breaks
    tubulin += BUNDLE_COUNTS * per_pixel(cells["tubulin_bundles"]) * bundles * (0.4 + 0.6 * breaks)
    tubulin *= body
    tubulin += CENTROSOME_COUNTS * centrosome_strength * np.exp(-((radius / centrosome_width) ** 2))
    in_mitosis = np.isin(owner, np.flatnonzero(cells["mitotic"]))  # spindle asters
    mitotic_owner = owner[in_mitosis]
    for k in range(MAX_POLES):
        pole_u, pole_v = cells["pole_uv"][mitotic_owner, k].astype(np.float32).T
        d = np.hypot(u[in_mitosis] - pole_u, v[in_mitosis] - pole_v)
        aster = np.exp(-((d / 2.2) ** 2)) + 0.3 * np.exp(-d / 5.0)
        weight = cells["pole_weight"][mitotic_owner, k]
        tubulin[in_mitosis] += POLE_COUNTS * weight * aster * body[in_mitosis]

    # ---------------------------------------------------------------- Actin
    cortex = np.exp(-(((rho - 0.94) / 0.05) ** 2)) * (0.5 + 0.5 * breaks)
    fibre_phase = per_pixel(cells["fibre_phase"])
    wavy_v = v + 1.5 * np.sin(u / 12.0 + fibre_phase)
    fibres = _ridges(2 * np.pi * wavy_v / 4.5 + fibre_phase, 6.0)
    fibres *= np.clip((0.9 - rho) / 0.1, 0.0, 1.0) * breaks
    actin = ACTIN_DIFFUSE_COUNTS * per_pixel(cells["actin_diffuse"]) * body
    actin += CORTEX_COUNTS * per_pixel(cells["actin_cortex"]) * cortex
    actin += FIBRE_COUNTS * per_pixel(cells["actin_fibres"]) * fibres

    images = {}
    for name, values in (("DAPI", dapi), ("Tubulin", tubulin), ("Actin", actin)):
        image = np.zeros(shape[0] * shape[1], dtype=np.float32)
        image[active] = np.clip(values, 0.0, None)
        images[name] = image.reshape(shape)
    images["Actin"] += _puncta(cells, shape, rng)
    return images


def _puncta(cells: dict, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Actin aggregates: bright diffraction-limited spots at random places inside their cells."""
    counts = cells["n_puncta"]
    image = np.zeros(shape, dtype=np.float32)
    if counts.sum() == 0:
        return image
    owner = np.repeat(np.arange(cells["n"]), counts)
    radius = 0.85 * np.sqrt(rng.random(owner.size))
    bearing = rng.uniform(0, 2 * np.pi, owner.size)
    u = radius * np.cos(bearing) * cells["semi_major"][owner]
    v = radius * np.sin(bearing) * cells["semi_minor"][owner]
    angle = cells["angle"][owner]
    py = np.rint(cells["centre"][owner, 0] + u * np.sin(angle) + v * np.cos(angle)).astype(int)
    px = np.rint(cells["centre"][owner, 1] + u * np.cos(angle) - v * np.sin(angle)).astype(int)
    inside = (py >= 0) & (py < shape[0]) & (px >= 0) & (px < shape[1])
    sigma = 1.1
    amplitude = PUNCTUM_COUNTS * 2 * np.pi * sigma**2 * rng.lognormal(0, 0.3, owner.size)
    np.add.at(image, (py[inside], px[inside]), amplitude[inside].astype(np.float32))
    return gaussian_blur(image, sigma)
