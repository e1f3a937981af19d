"""Synthetic surface-defect images with exact masks: procedural surfaces (brushed metal, cast, woven
fabric, wood grain; optionally scikit-image's CC0 brick, gravel and grass photos) and defects (scratch,
crack, pit cluster, inclusion, stain), seeded and deterministic.

    python -m inspector.synthetic --out data/train --count 2400 --seed 1 [--size 128]

writes ``images/<id>.png``, ``masks/<id>.png`` (0/255, empty for ``ok``) and ``manifest.csv`` with
label, surface, defect area fraction and box per image. Depends on numpy and OpenCV only.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from ..common.atomic import write_atomic
from ..common.folders import SKIP_MARKER
from ..common.progress import Progress

CLASSES = ("ok", "scratch", "crack", "pits", "inclusion", "stain")
SURFACES = ("brushed", "cast", "fabric", "wood")
TEXTURES = ("brick", "gravel", "grass")  # CC0 photos from scikit-image (optional, --surfaces)
MANIFEST_FIELDS = ("id", "image", "mask", "label", "label_index", "surface", "area_fraction",
                   "x0", "y0", "x1", "y1", "seed")


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # uint8 [S, S, 3] RGB
    mask: np.ndarray  # bool [S, S]
    label: str
    surface: str

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive ends; (0, 0, 0, 0) without a defect."""
        ys, xs = np.nonzero(self.mask)
        return ((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size
                else (0, 0, 0, 0))


def _noise(rng, size, blur):
    n = rng.standard_normal((size, size)).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), blur)
    return n / (n.std() + 1e-6)


def surface(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """Grey-level surface in [0, 1], float32 [S, S]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "brushed":
        streaks = cv2.blur(rng.standard_normal((size, size)).astype(np.float32), (size // 3, 1))
        base = 0.55 + 0.12 * streaks / (streaks.std() + 1e-6) + 0.1 * (xx - 0.5)
    elif kind == "cast":
        base = 0.5 + 0.08 * _noise(rng, size, size / 12) + 0.05 * _noise(rng, size, 1.0)
    elif kind == "fabric":
        f = rng.uniform(14, 22)
        weave = np.sin(2 * np.pi * f * xx) * np.sin(2 * np.pi * f * yy)
        base = 0.5 + 0.12 * weave + 0.04 * _noise(rng, size, 1.0)
    elif kind in TEXTURES:
        base = _texture(rng, kind, size)
    elif kind == "wood":
        warp = 0.08 * _noise(rng, size, size / 8)
        cy = rng.uniform(-1.5, -0.5)
        rings = np.sin(2 * np.pi * rng.uniform(8, 14) * (np.hypot(xx - 0.5, yy - cy) + warp))
        base = 0.5 + 0.1 * rings + 0.03 * _noise(rng, size, 1.0)
    else:
        raise ValueError(f"unknown surface {kind!r}")
    return np.clip(base * rng.uniform(0.8, 1.2), 0.05, 0.95).astype(np.float32)


def _texture(rng, kind: str, size: int) -> np.ndarray:
    """A random crop of a scikit-image texture photo, rescaled to [0.2, 0.8]."""
    try:
        import skimage.data
    except ImportError as e:
        raise ValueError(f"surface {kind!r} needs scikit-image (pip install scikit-image)") from e
    photo = getattr(skimage.data, kind)().astype(np.float32)
    if photo.ndim == 3:
        photo = photo.mean(axis=2)
    crop = int(rng.integers(size, min(photo.shape[:2]) + 1))
    y, x = rng.integers(0, photo.shape[0] - crop + 1), rng.integers(0, photo.shape[1] - crop + 1)
    patch = cv2.resize(photo[y:y + crop, x:x + crop], (size, size), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(patch, [1, 99])
    return 0.2 + 0.6 * np.clip((patch - low) / max(high - low, 1e-6), 0, 1)


def _polyline(rng, size, start, steps, step_len, turn):
    pts, angle = [np.array(start, np.float32)], rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        angle += rng.normal(0, turn)
        pts.append(pts[-1] + step_len * np.array([np.cos(angle), np.sin(angle)], np.float32))
    return np.clip(np.array(pts), 0, size - 1).astype(np.int32)


def defect_mask(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """Binary mask of one defect of class ``label`` (uint8 0/1)."""
    m = np.zeros((size, size), np.uint8)
    centre = rng.uniform(0.2 * size, 0.8 * size, 2)
    if label == "scratch":
        length = rng.uniform(0.2, 0.9) * size
        angle = rng.uniform(0, np.pi)
        d = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
        p0, p1 = np.clip(centre - d, 0, size - 1), np.clip(centre + d, 0, size - 1)
        cv2.line(m, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, int(rng.integers(1, 4)))
    elif label == "crack":
        pts = _polyline(rng, size, centre, int(rng.integers(8, 20)), size / 25, 0.6)
        cv2.polylines(m, [pts], False, 1, int(rng.integers(1, 3)))
        branch = _polyline(rng, size, pts[len(pts) // 2], int(rng.integers(3, 8)), size / 30, 0.8)
        cv2.polylines(m, [branch], False, 1, 1)
    elif label == "pits":
        spread = rng.uniform(0.04, 0.2) * size
        for _ in range(int(rng.integers(4, 14))):
            c = np.clip(centre + rng.normal(0, spread, 2), 2, size - 3)
            cv2.circle(m, (int(c[0]), int(c[1])), int(rng.integers(1, 4)), 1, -1)
    elif label == "inclusion":
        axes = (int(rng.uniform(0.02, 0.12) * size) + 2, int(rng.uniform(0.02, 0.12) * size) + 2)
        cv2.ellipse(m, (int(centre[0]), int(centre[1])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        rough = _noise(rng, size, 2.0) > 1.2
        m = (m.astype(bool) & ~(rough & (cv2.erode(m, np.ones((3, 3), np.uint8)) == 0))).astype(np.uint8)
    elif label == "stain":
        radius = rng.uniform(0.08, 0.32) * size
        yy, xx = np.mgrid[0:size, 0:size]
        r = np.hypot(xx - centre[0], yy - centre[1]) / radius + 0.35 * _noise(rng, size, size / 16)
        m = (r < 1.0).astype(np.uint8)
    else:
        raise ValueError(f"unknown defect class {label!r}")
    return m


def _apply(grey: np.ndarray, soft: np.ndarray, label: str, mask: np.ndarray, rng) -> tuple:
    """Draw one defect of class ``label`` with mask ``mask`` onto a grey surface; returns the new grey
    surface and the stain coverage (soft, brownish) so far."""
    if label == "stain":  # soft-edged brownish discolouration (the hard mask is its core)
        blur = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 2.0)
        return grey * (1 - 0.35 * blur) + 0.05 * blur, np.maximum(soft, blur)
    dark = rng.random() < 0.75
    contrast = rng.uniform(0.25, 0.45) * (-1 if dark else 1)
    return np.where(mask, np.clip(grey + contrast, 0, 1), grey), soft


def _finish(grey: np.ndarray, soft: np.ndarray, rng) -> np.ndarray:
    """Tint, stains' colour and sensor noise: uint8 RGB."""
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    brown = 1.0 - soft[:, :, None] * np.array([0.0, 0.1, 0.25], np.float32)
    rgb = np.clip(grey[:, :, None] * tint[None, None] * brown, 0, 1)
    rgb = np.clip(rgb + rng.normal(0, 0.015, rgb.shape), 0, 1)
    return (rgb * 255).round().astype(np.uint8)


def render(label: str, kind: str, size: int, seeds: tuple) -> Sample:
    """Render one image. Surface, defect and finish (tint, sensor noise) draw from separate random
    streams, so the same ``seeds`` with label "ok" give the identical image without the defect."""
    surface_rng, defect_rng, finish_rng = (np.random.default_rng(list(seeds) + [k]) for k in range(3))
    grey = surface(surface_rng, kind, size)
    mask = np.zeros((size, size), bool)
    soft = np.zeros((size, size), np.float32)
    if label != "ok":
        mask = defect_mask(defect_rng, label, size).astype(bool)
        grey, soft = _apply(grey, soft, label, mask, defect_rng)
    return Sample(image=_finish(grey, soft, finish_rng), mask=mask, label=label, surface=kind)


@dataclass(frozen=True)
class Defect:
    """One defect of a scene: its class, its exact mask, and its box (x0, y0, x1, y1, exclusive ends)."""

    label: str
    mask: np.ndarray  # bool [S, S]

    @property
    def box(self) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass(frozen=True)
class Scene:
    """A surface with several defects (the detector's data): each with its own mask and box."""

    image: np.ndarray  # uint8 [S, S, 3] RGB
    defects: tuple[Defect, ...]
    surface: str


def scene(seed: int, index: int, size: int = 128, *, count: tuple[int, int] = (1, 4),
          surfaces: tuple[str, ...] = SURFACES) -> Scene:
    """The ``index``-th scene of the detection data set with ``seed``: between count[0] and count[1]
    defects (classes drawn at random, "ok" excepted), none touching another (a defect that would is
    drawn again, up to 20 times), on a random surface; deterministic."""
    rng = np.random.default_rng([seed, index, 7])
    kind = surfaces[int(rng.integers(len(surfaces)))]
    surface_rng, finish_rng = (np.random.default_rng([seed, index, 7, k]) for k in range(2))
    grey = surface(surface_rng, kind, size)
    soft = np.zeros((size, size), np.float32)
    taken = np.zeros((size, size), bool)
    defects = []
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        label = CLASSES[1 + int(rng.integers(len(CLASSES) - 1))]
        for _attempt in range(20):
            mask = defect_mask(rng, label, size).astype(bool)
            near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            if mask.sum() >= 4 and not (near & taken).any():
                break
        else:
            continue
        taken |= mask
        grey, soft = _apply(grey, soft, label, mask, rng)
        defects.append(Defect(label, mask))
    return Scene(image=_finish(grey, soft, finish_rng), defects=tuple(defects), surface=kind)


def sample(seed: int, index: int, size: int = 128, *, label: str | None = None,
           surfaces: tuple[str, ...] = SURFACES) -> Sample:
    """The ``index``-th sample of the dataset with ``seed``: classes cycle, surfaces are random among
    ``surfaces``. ``label`` overrides the class (``"ok"`` gives the same image without its defect)."""
    kind = surfaces[int(np.random.default_rng([seed, index, 99]).integers(len(surfaces)))]
    return render(label or CLASSES[index % len(CLASSES)], kind, size, (seed, index))


def write_dataset(out: str, count: int, seed: int, size: int = 128, progress=None,
                  surfaces: tuple[str, ...] = SURFACES) -> str:
    """Write ``count`` samples and a manifest; returns the manifest path."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    write_atomic(os.path.join(out, "masks", SKIP_MARKER),  # an audit of the data set reads no mask as a part
                 "ground-truth masks, not parts: inspector audit skips a folder holding this file\n")
    rows = []
    for i in range(count):
        s = sample(seed, i, size, surfaces=surfaces)
        ident = f"{i:05d}_{s.label}"
        image, mask = os.path.join("images", ident + ".png"), os.path.join("masks", ident + ".png")
        cv2.imwrite(os.path.join(out, image), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(os.path.join(out, mask), s.mask.astype(np.uint8) * 255)
        rows.append(dict(zip(MANIFEST_FIELDS, (ident, image, mask, s.label, CLASSES.index(s.label), s.surface,
                                               f"{s.area_fraction:.6f}", *s.box, seed))))
        if progress:
            progress(i + 1, count)
    manifest = os.path.join(out, "manifest.csv")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(manifest, buf.getvalue())
    return manifest


def write_scenes(out: str, count: int, seed: int, size: int = 128, progress=None, *, first: int = 0,
                 images: str = "images", surfaces: tuple[str, ...] = SURFACES) -> str:
    """Write scenes ``first`` .. ``first + count - 1`` of ``seed`` (several defects each: a detector's data)
    into ``out/<images>/``, their defects' exact masks into ``out/masks/``, and ``out/truth.json``: per
    scene its image and each defect's label, box (x1, y1, x2, y2, pixels) and mask, paths relative to
    ``out``. Returns the truth.json path."""
    os.makedirs(os.path.join(out, images), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    write_atomic(os.path.join(out, "masks", SKIP_MARKER),  # an audit of the data set reads no mask as a part
                 "ground-truth masks, not parts: inspector audit skips a folder holding this file\n")
    listed = []
    for k in range(count):
        s = scene(seed, first + k, size, surfaces=surfaces)
        name = f"scene_{first + k:05d}"
        image = f"{images}/{name}.png"
        cv2.imwrite(os.path.join(out, image), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        defects = []
        for j, d in enumerate(s.defects):
            mask = f"masks/{name}_{j}.png"
            cv2.imwrite(os.path.join(out, mask), d.mask.astype(np.uint8) * 255)
            defects.append({"label": d.label, "box": list(d.box), "mask": mask})
        listed.append({"image": image, "surface": s.surface, "defects": defects})
        if progress:
            progress(k + 1, count)
    path = os.path.join(out, "truth.json")
    write_atomic(path, json.dumps({"seed": seed, "size": size, "scenes": listed}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inspector.synthetic",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--scenes", action="store_true",
                        help="scenes with several defects each and truth.json (a detector's data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--surfaces", default=",".join(SURFACES),
                        help=f"comma-separated among {', '.join(SURFACES + TEXTURES)} (the last three need "
                             "scikit-image)")
    args = parser.parse_args(argv)
    surfaces = tuple(k.strip() for k in args.surfaces.split(",") if k.strip())
    unknown = [k for k in surfaces if k not in SURFACES + TEXTURES]
    if unknown or not surfaces:
        parser.error(f"--surfaces: unknown {unknown}; choose among {', '.join(SURFACES + TEXTURES)}")

    if args.scenes:
        progress = Progress(args.count, unit="scenes")
        path = write_scenes(args.out, args.count, args.seed, args.size,
                            lambda done, _total: progress.update(done), surfaces=surfaces)
        progress.finish("written")
        print(f"wrote {args.count} scenes and {path}")
        return 0
    progress = Progress(args.count, unit="samples")
    path = write_dataset(args.out, args.count, args.seed, args.size,
                         lambda done, _total: progress.update(done), surfaces)
    progress.finish("written")
    print(f"wrote {args.count} samples and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
