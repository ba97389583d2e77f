"""Synthetic CUB-200-2011 + Waterbirds twin: procedural birds on procedural habitats, in the real on-disk formats.

Why it exists: the real datasets cannot be shipped, yet every stage of the pipeline (segmenter, masks, classifiers,
OOD evaluation) must run and be tested end to end. The generator reproduces the property the paper studies:

* **Fine-grained species.** Species are grouped into genera that share body shape and plumage; siblings differ only
  in small details (cap, wing bar, beak length, crest, tail fork, breast spot, eye ring).
* **Background bias.** Each species has a *home habitat*. In the CUB images a bird sits on its home habitat with
  probability ``bias``, otherwise on another habitat. Siblings of one genus get different home habitats, so the
  background is a cheap shortcut for exactly the hard, fine-grained decision.
* **Backgrounds independent of species** (``backgrounds="balanced"``, for a pretraining corpus): every species is
  shown on every habitat equally often, within the train and within the test split, so nothing about the background
  predicts the species (``bias`` is then unused).
* **Waterbirds twin.** Every CUB image is re-composited with its own soft mask onto a *held-out* texture instance
  of a habitat drawn independently of the species, as in the real Waterbirds (``img * seg + place * (1 - seg)``),
  so the bird keeps its exact position and the CUB masks, boxes and parts stay valid.

Habitat ids (``place`` in ``metadata.csv``): 0 forest, 1 water, 2 sand, 3 sky, 4 snow, 5 grass, 6 rock, 7 marsh.
With ``habitats=2`` this is the real Waterbirds convention (0 land, 1 water). ``y`` is 1 when the species' home
habitat is water. Every image is generated from its own RNG stream keyed by ``(seed, image_id)``, so the output is
byte-identical for a seed and independent of generation order.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bgmask.data.cub import GT_MASK_SUB_PATH, WATERBIRDS_SUB_PATH

HABITAT_NAMES = ("forest", "water", "sand", "sky", "snow", "grass", "rock", "marsh")
WATER_HABITAT = 1
PART_NAMES = (
    "back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing", "nape",
    "right eye", "right leg", "right wing", "tail", "throat",
)
BACKGROUNDS = ("home", "balanced")
SUPERSAMPLE = 4  # drawing resolution factor: the box-filtered downsample gives antialiased, soft mask edges

_BODY_COLOURS = {  # genus plumage
    "Slate": (92, 100, 116), "Rufous": (168, 92, 52), "Olive": (112, 118, 60), "Ochre": (196, 150, 64),
    "Ashen": (150, 150, 146), "Umber": (104, 72, 48), "Ivory": (222, 214, 190), "Sooty": (58, 56, 60),
}
_DETAIL_COLOURS = {  # species details (cap, wing bar)
    "Crimson": (214, 34, 46), "Azure": (40, 128, 226), "Golden": (246, 198, 26), "Snowy": (246, 246, 246),
    "Jet": (18, 18, 22), "Jade": (30, 170, 110),
}
_GENUS_NOUNS = ("Finch", "Warbler", "Tern", "Heron", "Wren", "Plover", "Grebe", "Shrike", "Vireo", "Tanager",
                "Sparrow", "Gull", "Kinglet", "Bunting", "Pipit", "Thrush", "Flycatcher", "Oriole", "Swallow", "Jay")


@dataclass(frozen=True)
class Species:
    """Appearance of one synthetic species (all values fixed per class)."""

    name: str
    genus: int
    home_habitat: int
    body: tuple[int, int, int]
    cap: tuple[int, int, int]
    wing_bar: tuple[int, int, int]
    beak_length: float
    crest: bool
    forked_tail: bool
    breast_spot: bool
    eye_ring: bool
    body_aspect: float


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings (mirrors the ``make_synthetic_cub.py`` flags)."""

    num_classes: int = 20
    images_per_class: int = 40
    image_size: int = 128
    habitats: int = 4
    bias: float = 0.95
    seed: int = 0
    species_per_genus: int = 4
    backgrounds: str = "home"  # "home": home habitat with probability ``bias``; "balanced": independent of species
    train_fraction: float = 0.5  # of each class's images in the train split (rounded down)
    waterbirds_train_bias: float = 0.95  # Waterbirds train split: birds on a habitat of their own type (the release)
    # Extra Waterbirds validation images per class (split 1), in the Waterbirds folder only (not in images.txt), each
    # habitat equally often, as the release's validation split puts each class on both place types alike. The CUB
    # splits and the Waterbirds train and test splits are untouched by them. make_synthetic_cub.py's default (24)
    # gives every (y, habitat) validation group of the default benchmark >= 30 images, enough to rank epochs (the
    # release's smallest validation group: 133 images).
    waterbirds_extra_val: int = 0

    @property
    def train_per_class(self) -> int:
        return int(self.images_per_class * self.train_fraction + 1e-9)  # 0.29 * 100 is 28.999...

    def validate(self) -> None:
        if not 2 <= self.num_classes <= 200:
            raise ValueError(f"num_classes must be in [2, 200], got {self.num_classes}")
        if self.images_per_class < 2:
            raise ValueError(f"images_per_class must be >= 2 (one train, one test), got {self.images_per_class}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        if not 2 <= self.habitats <= len(HABITAT_NAMES):
            raise ValueError(f"habitats must be in [2, {len(HABITAT_NAMES)}] ({', '.join(HABITAT_NAMES)}), "
                             f"got {self.habitats}")
        if not 0.0 <= self.bias <= 1.0 or not 0.0 <= self.waterbirds_train_bias <= 1.0:
            raise ValueError(f"bias and waterbirds_train_bias must be probabilities in [0, 1], got {self.bias} and "
                             f"{self.waterbirds_train_bias}")
        if self.backgrounds not in BACKGROUNDS:
            raise ValueError(f"backgrounds must be one of {BACKGROUNDS}, got {self.backgrounds!r}")
        if not 1 <= self.train_per_class < self.images_per_class:
            raise ValueError(f"train_fraction {self.train_fraction} leaves {self.train_per_class} of "
                             f"{self.images_per_class} images per class for training; both splits need at least one")


def make_species(config: SyntheticConfig) -> list[Species]:
    """Deterministic species table: genera share plumage, siblings differ in small details and home habitat."""
    rng = np.random.default_rng([config.seed, 7919])
    body_names = list(_BODY_COLOURS)
    detail_names = list(_DETAIL_COLOURS)
    species, used_names = [], set()
    for c in range(config.num_classes):
        genus, sibling = divmod(c, config.species_per_genus)
        genus_rng = np.random.default_rng([config.seed, 104729, genus])
        body_name = body_names[genus % len(body_names)]
        noun = _GENUS_NOUNS[genus % len(_GENUS_NOUNS)]
        cap_name = detail_names[int(genus_rng.integers(len(detail_names)) + sibling) % len(detail_names)]
        bar_name = detail_names[int(genus_rng.integers(len(detail_names)) + 2 * sibling + 1) % len(detail_names)]
        crest = bool((sibling + genus) % 2)
        name = f"{cap_name}_Capped_{bar_name}_Barred_{'Crested_' if crest else ''}{body_name}_{noun}"
        if name in used_names:  # large class counts can repeat a combination; keep names unique like CUB's
            name = f"{name}_{c + 1}"
        used_names.add(name)
        species.append(Species(
            name=name, genus=genus,
            # Siblings get different homes: the background then separates exactly the fine-grained look-alikes.
            home_habitat=(sibling + genus) % config.habitats,
            body=_BODY_COLOURS[body_name], cap=_DETAIL_COLOURS[cap_name], wing_bar=_DETAIL_COLOURS[bar_name],
            beak_length=(0.10, 0.18, 0.26)[(sibling + 2 * genus) % 3],
            crest=crest, forked_tail=bool(sibling // 2 % 2), breast_spot=bool((sibling + 1) // 2 % 2),
            eye_ring=bool(rng.integers(2)), body_aspect=float(0.52 + 0.12 * ((genus * 5) % 4) / 3),
        ))
    return species


def appearance(sp: Species) -> tuple:
    """What a species looks like when rendered (its name and home habitat aside)."""
    return (sp.body, sp.cap, sp.wing_bar, sp.beak_length, sp.crest, sp.forked_tail, sp.breast_spot, sp.eye_ring,
            round(sp.body_aspect, 6))


def disjoint_species(benchmark: SyntheticConfig, num_classes: int, seed: int) -> list[Species]:
    """``num_classes`` species that are none of ``benchmark``'s, for a pretraining corpus (as a pretraining set's
    classes should not be the evaluation's species).

    Candidates come from a species table made with ``seed`` (genera share plumage and shape as in the benchmark, so
    the corpus teaches the same kind of fine-grained distinctions). A candidate is dropped when its
    :func:`appearance` equals a benchmark species' (or an earlier candidate's), and when its name is a benchmark
    species' name; the first ``num_classes`` that remain are returned, in order.
    """
    taken = {appearance(sp) for sp in make_species(benchmark)}
    names = {sp.name for sp in make_species(benchmark)}
    candidates = make_species(SyntheticConfig(num_classes=200, seed=seed, habitats=benchmark.habitats,
                                              species_per_genus=benchmark.species_per_genus))
    chosen = []
    for sp in candidates:
        if appearance(sp) not in taken and sp.name not in names:
            taken.add(appearance(sp))
            chosen.append(sp)
    if len(chosen) < num_classes:
        raise ValueError(f"only {len(chosen)} species differ from the benchmark's with seed {seed}; ask for fewer")
    return chosen[:num_classes]


def balanced_habitats(config: SyntheticConfig, class_index: int, is_train: np.ndarray) -> np.ndarray:
    """The background habitat of each image of one class with ``backgrounds="balanced"``: within the train and within
    the test split, every habitat occurs ``n // habitats`` times (the remaining ``n % habitats`` images take distinct
    random habitats), in a random order. The draw never looks at the species, so backgrounds carry no information
    about it; counts are exactly equal when a split's size is a multiple of ``habitats``."""
    rng = np.random.default_rng([config.seed, 32452843, class_index])
    habitats = np.empty(len(is_train), np.int64)
    for part in (is_train, ~is_train):
        n = int(part.sum())
        plan = np.concatenate([np.tile(np.arange(config.habitats), n // config.habitats),
                               rng.choice(config.habitats, n % config.habitats, replace=False)])
        habitats[part] = rng.permutation(plan)
    return habitats


# --------------------------------------------------------------------------------------------------- habitats
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells``-sized random grid bicubically upsampled to ``h x w``."""
    grid = rng.random((cells, max(2, round(cells * w / h)))).astype(np.float32)
    up = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
    return np.clip(np.asarray(up), 0.0, 1.0)


def _jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def render_habitat(habitat: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One random instance of a habitat texture as a float32 ``(h, w, 3)`` array in [0, 255]."""
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    name = HABITAT_NAMES[habitat]
    if name == "forest":  # foliage blobs and vertical trunks
        leaves = _smooth_noise(rng, h, w, 6)[..., None]
        img = _jitter(rng, (34, 80, 38)) * (0.6 + 0.8 * leaves)
        for _ in range(int(rng.integers(2, 5))):
            x0, half = rng.uniform(0, 1), rng.uniform(0.02, 0.06)
            trunk = (np.abs(xx - x0) < half).astype(np.float32)
            img = img * (1 - trunk) + _jitter(rng, (84, 58, 36), 10) * trunk
    elif name == "water":  # horizontal ripples, darker with depth
        wobble = _smooth_noise(rng, h, w, 4)[..., None]
        freq, phase = rng.uniform(10, 18), rng.uniform(0, 2 * math.pi)
        ripple = np.sin(2 * math.pi * freq * yy + 3.0 * wobble + phase)
        img = _jitter(rng, (38, 96, 164)) * (1.05 - 0.35 * yy) + 26.0 * ripple
    elif name == "sand":  # diagonal dunes with fine grain
        angle, freq = rng.uniform(-0.6, 0.6), rng.uniform(3, 6)
        dune = np.sin(2 * math.pi * freq * (yy + angle * xx) + rng.uniform(0, 6.3))
        grain = rng.random((h, w, 1)).astype(np.float32)
        img = _jitter(rng, (206, 184, 136)) + 18.0 * dune + 22.0 * (grain - 0.5)
    elif name == "sky":  # vertical gradient with soft clouds
        clouds = np.clip((_smooth_noise(rng, h, w, 4) - 0.5) * 3.0, 0, 1)[..., None]
        top, bottom = _jitter(rng, (96, 150, 222)), _jitter(rng, (176, 206, 240))
        img = (top * (1 - yy) + bottom * yy) * (1 - clouds) + 248.0 * clouds
    elif name == "snow":  # bright, bluish shading
        shade = _smooth_noise(rng, h, w, 5)[..., None]
        img = _jitter(rng, (226, 232, 242), 8) - 40.0 * shade + 8.0 * (rng.random((h, w, 1)) - 0.5)
    elif name == "grass":  # vertical blades: noise stretched along y
        blades = np.asarray(Image.fromarray(rng.random((4, w)).astype(np.float32)).resize(
            (w, h), Image.BILINEAR))[..., None]
        img = _jitter(rng, (118, 150, 52)) * (0.7 + 0.6 * blades)
    elif name == "rock":  # blotchy greys
        blotch = _smooth_noise(rng, h, w, 8)[..., None]
        img = _jitter(rng, (128, 124, 118), 12) * (0.55 + 0.9 * blotch)
    else:  # marsh: water below a reed line
        line = rng.uniform(0.4, 0.6)
        reeds = np.asarray(Image.fromarray(rng.random((3, w)).astype(np.float32)).resize(
            (w, h), Image.BILINEAR))[..., None]
        below = (yy > line).astype(np.float32)
        img = below * _jitter(rng, (60, 96, 110)) + (1 - below) * _jitter(rng, (150, 140, 70)) * (0.6 + 0.6 * reeds)
    return np.clip(img, 0, 255).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ birds
def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


@dataclass
class RenderedBird:
    """A bird drawn over a black canvas: premultiplied colour, soft alpha (0..1) and its 15 part locations."""

    colour: np.ndarray  # (h, w, 3) float32, already multiplied by alpha
    alpha: np.ndarray  # (h, w) float32 in [0, 1]
    parts: list[tuple[float, float, int]]  # (x, y, visible) per PART_NAMES entry, CUB convention


def render_bird(sp: Species, rng: np.random.Generator, h: int, w: int) -> RenderedBird:
    """Draw one bird of species ``sp`` with random pose, size, position and lighting."""
    size = rng.uniform(0.62, 0.85) * min(h, w)  # bird length in pixels (body frame is ~1 unit long)
    angle = rng.uniform(-0.25, 0.25)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    cx = rng.uniform(0.40, 0.60) * w
    cy = rng.uniform(0.42, 0.58) * h
    light = rng.uniform(0.85, 1.15)
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    s = SUPERSAMPLE

    def to_px(points) -> list[tuple[float, float]]:
        p = np.asarray(points, np.float64).reshape(-1, 2)
        x, y = p[:, 0] * facing * size, p[:, 1] * size
        xr, yr = cx + cos_a * x - sin_a * y, cy + sin_a * x + cos_a * y
        return [(float(a), float(b)) for a, b in zip(xr, yr)]

    def colour(c) -> tuple[int, ...]:
        return tuple(int(np.clip(v * light, 0, 255)) for v in c)

    ry = 0.30 * sp.body_aspect
    body = _ellipse(0.0, 0.0, 0.30, ry)
    head_c, head_r = (0.28, -ry - 0.02), 0.11
    head = _ellipse(*head_c, head_r, head_r)
    beak = [(head_c[0] + 0.08, head_c[1] - 0.035), (head_c[0] + 0.09 + sp.beak_length, head_c[1] + 0.015),
            (head_c[0] + 0.08, head_c[1] + 0.045)]
    tail_tip_y = -0.05
    if sp.forked_tail:
        tail = [(-0.24, -0.06), (-0.52, tail_tip_y - 0.10), (-0.42, tail_tip_y), (-0.52, tail_tip_y + 0.10),
                (-0.24, 0.05)]
    else:
        tail = [(-0.24, -0.06), (-0.50, tail_tip_y - 0.07), (-0.54, tail_tip_y), (-0.50, tail_tip_y + 0.07),
                (-0.24, 0.05)]
    legs = [[(x - 0.012, ry - 0.02), (x + 0.012, ry - 0.02), (x + 0.012, ry + 0.14), (x - 0.012, ry + 0.14)]
            for x in (-0.04, 0.06)]
    crest = [(head_c[0] - 0.06, head_c[1] - 0.07), (head_c[0] - 0.16, head_c[1] - 0.22),
             (head_c[0] + 0.02, head_c[1] - 0.10)]
    wing = _ellipse(-0.05, -0.02, 0.19, ry * 0.55)
    bar = _ellipse(-0.05, -0.02, 0.16, ry * 0.16)
    cap = _ellipse(head_c[0], head_c[1] - 0.055, 0.085, 0.05)
    spot = _ellipse(0.16, ry * 0.45, 0.07, 0.06)
    eye_c = (head_c[0] + 0.04, head_c[1] - 0.01)

    mask_img = Image.new("L", (w * s, h * s), 0)
    col_img = Image.new("RGB", (w * s, h * s), (0, 0, 0))
    dm, dc = ImageDraw.Draw(mask_img), ImageDraw.Draw(col_img)

    def poly(points, fill, silhouette: bool) -> None:
        px = [(x * s, y * s) for x, y in to_px(points)]
        dc.polygon(px, fill=colour(fill))
        if silhouette:
            dm.polygon(px, fill=255)

    darker = tuple(0.7 * v for v in sp.body)
    for leg in legs:
        poly(leg, (200, 150, 60), True)
    poly(tail, darker, True)
    poly(body, sp.body, True)
    if sp.crest:
        poly(crest, sp.cap, True)
    poly(head, sp.body, True)
    poly(beak, (250, 170, 30) if sp.beak_length > 0.2 else (60, 50, 40), True)
    poly(wing, darker, False)
    poly(bar, sp.wing_bar, False)
    poly(cap, sp.cap, False)
    if sp.breast_spot:
        poly(spot, (240, 236, 220), False)
    if sp.eye_ring:
        poly(_ellipse(*eye_c, 0.032, 0.032, 12), (250, 250, 250), False)
    poly(_ellipse(*eye_c, 0.018, 0.018, 12), (10, 10, 10), False)

    alpha = np.asarray(mask_img.reduce(s), np.float32) / 255.0
    col = np.asarray(col_img.reduce(s), np.float32)

    # CUB parts: (x, y, visible). A bird in profile shows its near side only.
    near_is_left = facing > 0  # facing right shows the bird's left side
    anchors = {
        "back": (-0.05, -ry * 0.9), "beak": (head_c[0] + 0.08 + sp.beak_length, head_c[1] + 0.01),
        "belly": (0.0, ry * 0.8), "breast": (0.17, ry * 0.4), "crown": (head_c[0], head_c[1] - 0.09),
        "forehead": (head_c[0] + 0.07, head_c[1] - 0.06), "eye": eye_c, "leg": (0.0, ry + 0.12),
        "wing": (-0.05, -0.02), "nape": (head_c[0] - 0.08, head_c[1] + 0.02), "tail": (-0.50, tail_tip_y),
        "throat": (head_c[0] + 0.05, head_c[1] + 0.09),
    }
    parts = []
    for name in PART_NAMES:
        side, _, key = name.partition(" ")
        if key:  # sided part: "left eye" -> anchor "eye", visible on the near side (legs: both visible)
            visible = key == "leg" or (side == "left") == near_is_left
            anchor = anchors[key]
        else:
            visible, anchor = True, anchors[name]
        if visible:
            (x, y), = to_px([anchor])
            if 0 <= x < w and 0 <= y < h:
                parts.append((round(x, 1), round(y, 1), 1))
                continue
        parts.append((0.0, 0.0, 0))
    return RenderedBird(colour=col, alpha=alpha, parts=parts)


def own_type_place(y: int, place: int, rng: np.random.Generator, config: SyntheticConfig) -> int:
    """A Waterbirds train-split habitat: with probability ``waterbirds_train_bias`` (the release's 95 %) one of the
    bird's own type — water for a waterbird (``y`` 1), land for a landbird — otherwise of the other type. ``place``
    (drawn independently) is kept when it already has the chosen type."""
    on_water = (y == 1) == (rng.random() < config.waterbirds_train_bias)
    if on_water:
        return WATER_HABITAT
    land = [h for h in range(config.habitats) if h != WATER_HABITAT]
    return place if place != WATER_HABITAT else int(rng.choice(land))


def _write_extra_validation(root: Path, config: SyntheticConfig, species: list[Species], last_id: int) -> list[list]:
    """The extra Waterbirds validation images (``waterbirds_extra_val`` per class): drawn from their own random
    streams (keys that no CUB image uses), with ids after the last CUB image, written to the Waterbirds folder with
    their soft masks in ``segmentations/``; their metadata rows."""
    wb_root, rows, image_id = root / WATERBIRDS_SUB_PATH, [], last_id
    for c, sp in enumerate(species):
        class_dir = f"{c + 1:03d}.{sp.name}"
        y = int(sp.home_habitat == WATER_HABITAT)
        for j in range(config.waterbirds_extra_val):
            image_id += 1
            rng = np.random.default_rng([config.seed, 7919, c, j])
            h, w = config.image_size, (config.image_size if rng.random() < 0.5 else round(config.image_size * 1.25))
            bird = render_bird(sp, rng, h, w)
            place = (c + j) % config.habitats  # every habitat equally often per class
            background = render_habitat(place, np.random.default_rng([config.seed, 7919, c, j, 2]), h, w)
            image = bird.colour + background * (1.0 - bird.alpha[..., None])
            stem = f"{sp.name}_{config.images_per_class + j + 1:04d}_{image_id}"
            rel = f"{class_dir}/{stem}.jpg"
            (wb_root / rel).write_bytes(_encode_jpeg(image))
            mask = np.clip(bird.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)
            (root / GT_MASK_SUB_PATH / class_dir / f"{stem}.png").write_bytes(_encode_png(mask))
            rows.append([image_id, rel, y, 1, place, f"/synthetic/{HABITAT_NAMES[place]}/{image_id:08d}.jpg"])
    return rows


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``foreground * alpha + background * (1 - alpha)`` for straight (non-premultiplied) colours."""
    a = alpha[..., None]
    return foreground * a + background * (1.0 - a)


def _encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def _encode_png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------- the writer
@dataclass
class GenerationSummary:
    """What :func:`generate` wrote."""

    cub_root: Path
    waterbirds_root: Path
    num_images: int
    num_train: int
    num_classes: int
    home_habitat_rate: float  # fraction of CUB images on their species' home habitat
    seconds: float
    # CUB background counts: [split (0 train, 1 test), class, habitat] (the images do not record their habitat)
    habitat_counts: np.ndarray | None = None
    backgrounds: str = "home"  # SyntheticConfig.backgrounds

    def __str__(self) -> str:
        backgrounds = (f"{self.home_habitat_rate:.1%} on the home habitat" if self.backgrounds == "home" else
                       "backgrounds independent of species")
        return (f"Synthetic CUB: {self.num_images} images ({self.num_train} train / {self.num_images - self.num_train} "
                f"test), {self.num_classes} classes, {backgrounds} -> "
                f"{self.cub_root}\nSynthetic Waterbirds: {self.num_images} images -> {self.waterbirds_root}\n"
                f"Generated in {self.seconds:.1f} s ({self.num_images / max(self.seconds, 1e-9):.0f} images/s)")


def generate(out_dir: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), progress: bool = True,
             overwrite: bool = False, species: list[Species] | None = None) -> GenerationSummary:
    """Write ``out_dir/CUB_200_2011`` (with its Waterbirds folder inside) for ``config``.

    The tree is built in a temporary sibling folder and renamed into place at the end, so an interrupted run never
    leaves a half-written dataset behind.

    Args:
        out_dir: parent folder; ``CUB_200_2011/`` is created inside it.
        config: generator settings.
        progress: show progress (a bar on a terminal, periodic lines in a log).
        overwrite: replace an existing ``CUB_200_2011/`` instead of refusing.
        species: the species table (default: :func:`make_species` of ``config``); one per class.
    """
    config.validate()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    final_root = out_dir / "CUB_200_2011"
    if final_root.exists() and not overwrite:
        raise FileExistsError(f"{final_root} already exists; delete it or pass --overwrite to regenerate it.")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_root = out_dir / f".CUB_200_2011.partial-{os.getpid()}"
    if tmp_root.exists():
        shutil.rmtree(tmp_root)
    species = make_species(config) if species is None else list(species)
    if len(species) != config.num_classes:
        raise ValueError(f"{len(species)} species given for num_classes={config.num_classes}")
    habitat_counts = np.zeros((2, config.num_classes, config.habitats), np.int64)
    try:
        summary_counts = _write_tree(tmp_root, config, species, progress, habitat_counts)
        if final_root.exists():
            shutil.rmtree(final_root)
        tmp_root.rename(final_root)
    finally:
        if tmp_root.exists():
            shutil.rmtree(tmp_root, ignore_errors=True)
    num_images, num_train, on_home = summary_counts
    return GenerationSummary(final_root, final_root / WATERBIRDS_SUB_PATH, num_images, num_train, config.num_classes,
                             on_home / num_images, time.perf_counter() - start, habitat_counts, config.backgrounds)


def _write_tree(root: Path, config: SyntheticConfig, species: list[Species], progress: bool,
                habitat_counts: np.ndarray) -> tuple[int, int, int]:
    from bgmask.infra.progress import progress_bar

    wb_root = root / WATERBIRDS_SUB_PATH
    (root / "parts").mkdir(parents=True)
    wb_root.mkdir()
    size = config.image_size
    images_lines, label_lines, split_lines, bbox_lines, part_lines, wb_rows = [], [], [], [], [], []
    n_total = config.num_classes * config.images_per_class
    bar = progress_bar(total=n_total, desc="synthetic CUB", unit="img", disable=not progress)
    image_id, num_train, on_home = 0, 0, 0
    for c, sp in enumerate(species):
        class_dir = f"{c + 1:03d}.{sp.name}"
        for sub in ("images", GT_MASK_SUB_PATH):
            (root / sub / class_dir).mkdir(parents=True)
        (wb_root / class_dir).mkdir()
        split_rng = np.random.default_rng([config.seed, 15485863, c])
        is_train = np.zeros(config.images_per_class, bool)
        is_train[split_rng.permutation(config.images_per_class)[: config.train_per_class]] = True
        planned = balanced_habitats(config, c, is_train) if config.backgrounds == "balanced" else None
        for k in range(config.images_per_class):
            image_id += 1
            rng = np.random.default_rng([config.seed, image_id])
            # Real CUB images vary in shape; two aspect ratios exercise the non-square code paths.
            h, w = size, (size if rng.random() < 0.5 else round(size * 1.25))
            if planned is not None:
                habitat = int(planned[k])
            elif rng.random() < config.bias:
                habitat = sp.home_habitat
            else:
                habitat = int((sp.home_habitat + rng.integers(1, config.habitats)) % config.habitats)
            on_home += habitat == sp.home_habitat
            habitat_counts[int(not is_train[k]), c, habitat] += 1
            bird = render_bird(sp, rng, h, w)
            background = render_habitat(habitat, np.random.default_rng([config.seed, image_id, 1]), h, w)
            image = bird.colour + background * (1.0 - bird.alpha[..., None])  # colour is premultiplied
            # Waterbirds: a habitat drawn independently of the species, held-out texture stream (key 2 is never used
            # for CUB backgrounds). As in the real release, ~20 % of the CUB train images form the validation split
            # (1), which stays independent; in the train split (0) 95 % of the birds sit on a habitat of their own
            # type (water for waterbirds, land for landbirds). The test split (2) is drawn exactly as before.
            wb_rng = np.random.default_rng([config.seed, image_id, 2])
            place = int(wb_rng.integers(config.habitats))
            y = int(sp.home_habitat == WATER_HABITAT)
            wb_split = 2
            if is_train[k]:
                split_rng = np.random.default_rng([config.seed, image_id, 3])
                wb_split = 1 if split_rng.random() < 0.2 else 0
                if wb_split == 0:
                    place = own_type_place(y, place, split_rng, config)
            wb_image = composite(image, bird.alpha, render_habitat(place, wb_rng, h, w))
            mask = np.clip(bird.alpha * 255.0 + 0.5, 0, 255).astype(np.uint8)

            stem = f"{sp.name}_{k + 1:04d}_{image_id}"
            rel = f"{class_dir}/{stem}.jpg"
            (root / "images" / rel).write_bytes(_encode_jpeg(image))
            (wb_root / rel).write_bytes(_encode_jpeg(wb_image))
            (root / GT_MASK_SUB_PATH / class_dir / f"{stem}.png").write_bytes(_encode_png(mask))

            ys, xs = np.nonzero(mask)
            x0, y0 = float(xs.min()), float(ys.min())
            images_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {c + 1}")
            split_lines.append(f"{image_id} {int(is_train[k])}")
            bbox_lines.append(f"{image_id} {x0:.1f} {y0:.1f} {float(xs.max()) - x0 + 1:.1f} "
                              f"{float(ys.max()) - y0 + 1:.1f}")
            for part_id, (px, py, vis) in enumerate(bird.parts, start=1):
                part_lines.append(f"{image_id} {part_id} {px:.1f} {py:.1f} {vis}")
            wb_rows.append([image_id, rel, y, wb_split, place,
                            f"/synthetic/{HABITAT_NAMES[place]}/{image_id:08d}.jpg"])
            num_train += int(is_train[k])
            bar.update()
    bar.close()

    def write_lines(path: Path, lines: list[str]) -> None:
        path.write_text("\n".join(lines) + "\n")

    write_lines(root / "images.txt", images_lines)
    write_lines(root / "image_class_labels.txt", label_lines)
    write_lines(root / "train_test_split.txt", split_lines)
    write_lines(root / "bounding_boxes.txt", bbox_lines)
    write_lines(root / "classes.txt", [f"{c + 1} {c + 1:03d}.{sp.name}" for c, sp in enumerate(species)])
    write_lines(root / "parts" / "parts.txt", [f"{i} {name}" for i, name in enumerate(PART_NAMES, start=1)])
    write_lines(root / "parts" / "part_locs.txt", part_lines)
    write_lines(root / "habitats.txt",  # synthetic-only extra: the ground truth behind the bias
                [f"{c + 1} {HABITAT_NAMES[sp.home_habitat]}" for c, sp in enumerate(species)])
    wb_rows += _write_extra_validation(root, config, species, image_id)
    with open(wb_root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        writer.writerows(wb_rows)
    return image_id, num_train, on_home
