"""``ShapesDataset``: the built-in procedural image-caption set (needs no files, no network).

Each sample is one coloured shape on a plain grey background, drawn with Pillow at the model's
image size, and a caption naming its attributes::

    "a small red circle at the top left"

Attributes are drawn from ``random.Random(f"{seed}:{split}:{index}")`` (string seeds are hashed
with SHA-512, so they are the same in every process and Python run): a sample is a pure function
of (seed, split, index), the stream is infinite, and the ``eval`` split draws from another
namespace, so its images are held out from training. Zero-shot classes are colour x shape
(``classes``) with prompt ``TEMPLATES`` such as "a photo of a {color} {shape}.".
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw

from trainer.data.stream import resolve_rank
from vlscale.errors import ConfigError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 70, 225),
    "yellow": (235, 215, 30),
    "purple": (140, 45, 190),
    "orange": (245, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "cross", "star")
SIZES: dict[str, float] = {"small": 0.25, "medium": 0.4, "large": 0.55}  # bbox side / image side
POSITIONS = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)  # a 3 x 3 grid, row-major
CAPTIONS = (
    "a {size} {color} {shape} at the {position}",
    "a {color} {shape}, {size}, at the {position} of the image",
    "{size} {color} {shape} on a grey background, {position}",
)
TEMPLATES = (
    "a photo of a {color} {shape}.",
    "a {color} {shape}.",
    "a drawing of a {color} {shape}.",
    "a {color} {shape} on a grey background.",
)
SUPERSAMPLE = 2  # draw at 2x and box-filter down: smooth edges, still one clear colour
Split = Literal["train", "eval"]


@dataclass(frozen=True)
class ShapeAttrs:
    """Everything that decides one sample; ``bbox`` is (x0, y0, x1, y1) in output pixels."""

    color: str
    shape: str
    size: str
    position: str
    background: int
    bbox: tuple[float, float, float, float]
    caption: str

    @property
    def class_index(self) -> int:
        """Index into ``ShapesDataset.classes`` (colour-major)."""
        return list(COLORS).index(self.color) * len(SHAPES) + SHAPES.index(self.shape)


def sample_attrs(seed: int, split: str, index: int, image_size: int) -> ShapeAttrs:
    """The attributes of sample ``index``: a pure function of its arguments."""
    rng = random.Random(f"{seed}:{split}:{index}")
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    size, position = rng.choice(list(SIZES)), rng.choice(POSITIONS)
    side = SIZES[size] * image_size
    row, col = divmod(POSITIONS.index(position), 3)
    cell = image_size / 3
    # centre of the grid cell, jittered while the shape still fits in the cell, then clamped
    # so the shape stays inside the image; the bbox centre stays in the named third either way
    room = max(0.0, (cell - side) / 2)
    cx = (col + 0.5) * cell + rng.uniform(-0.5, 0.5) * room
    cy = (row + 0.5) * cell + rng.uniform(-0.5, 0.5) * room
    half = side / 2
    cx, cy = min(max(cx, half), image_size - half), min(max(cy, half), image_size - half)
    caption = rng.choice(CAPTIONS).format(size=size, color=color, shape=shape, position=position)
    background = rng.randint(70, 150)  # grey: no hue, so the shape's colour is unambiguous
    return ShapeAttrs(
        color,
        shape,
        size,
        position,
        background,
        (cx - half, cy - half, cx + half, cy + half),
        caption,
    )


def _star(x0, y0, x1, y1, points=5, inner=0.45):
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    out = []
    for k in range(2 * points):
        rad = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / points
        out.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return out


def render(attrs: ShapeAttrs, image_size: int) -> Image.Image:
    """Draw ``attrs`` as an RGB image of side ``image_size``."""
    s = SUPERSAMPLE
    img = Image.new("RGB", (image_size * s, image_size * s), (attrs.background,) * 3)
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = (v * s for v in attrs.bbox)
    fill = COLORS[attrs.color]
    if attrs.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif attrs.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif attrs.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif attrs.shape == "cross":
        t = (x1 - x0) / 3  # arm thickness: a third of the side
        draw.rectangle((x0 + t, y0, x1 - t, y1), fill=fill)
        draw.rectangle((x0, y0 + t, x1, y1 - t), fill=fill)
    else:
        draw.polygon(_star(x0, y0, x1, y1), fill=fill)
    return img.reduce(s) if s > 1 else img


class ShapesDataset:
    """Infinite, deterministic, rank-sharded procedural dataset (a ``SampleSource``).

    Records are global sample indices; the cursor is this rank's count of records taken.
    """

    templates: tuple[str, ...] = TEMPLATES

    @property
    def classes(self) -> list[dict[str, str]]:
        """Zero-shot classes, colour-major: fields for ``templates`` (``{color}``, ``{shape}``)."""
        return [{"color": c, "shape": s} for c in COLORS for s in SHAPES]

    @property
    def class_names(self) -> list[str]:
        return [f"{c} {s}" for c in COLORS for s in SHAPES]

    def __init__(
        self,
        image_size: int,
        *,
        seed: int = 0,
        split: Split = "train",
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if image_size < 8:
            raise ConfigError(
                "image_size", f"shapes need at least 8 pixels a side, got {image_size}"
            )
        if split not in ("train", "eval"):
            raise ConfigError("split", f"unknown split {split!r}; use 'train' or 'eval'")
        self.image_size, self.seed, self.split = image_size, seed, split
        self.rank, self.world_size = resolve_rank(rank, world_size)

    def initial_cursor(self) -> int:
        return 0

    def global_index(self, i: int) -> int:
        """The global sample index of this rank's ``i``-th record."""
        return self.rank + self.world_size * i

    def records(self, cursor: int = 0) -> Iterator[tuple[int, int]]:
        i = cursor
        while True:
            yield self.global_index(i), i + 1
            i += 1

    def attrs(self, index: int) -> ShapeAttrs:
        return sample_attrs(self.seed, self.split, index, self.image_size)

    def decode(self, index: int) -> tuple[Image.Image, str]:
        a = self.attrs(index)
        return render(a, self.image_size), a.caption
