"""Image transforms with Pillow + torch only (no torchvision).

Evaluation-style CLIP preprocessing (OpenAI CLIP ``_transform``; OpenCLIP ``image_transform``
without augmentation)::

    RGB -> resize so the SHORTER side is ``image_size`` (bicubic) -> center crop image_size^2
        -> float in [0, 1] -> (x - mean) / std per channel      -> tensor (3, H, W)

with CLIP's dataset statistics (``OPENAI_DATASET_MEAN/STD`` in OpenCLIP's ``constants.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (aspect kept), then the central ``size`` x ``size`` square."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        # round, but never below the crop size (thin images would otherwise lose a pixel)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


class ImageTransform:
    """Callable PIL image -> normalised float tensor (3, image_size, image_size).

    The arithmetic is done in numpy: it is single-threaded, so decode workers do not fight
    over torch's intra-op thread pool for a few hundred kilobytes each (on a loaded 2-core
    machine torch's version was ~20x slower than numpy's).
    """

    def __init__(self, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.image_size = image_size
        # x_norm = x * scale + shift, with scale = 1 / (255 std), shift = -mean / std
        self.scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(1, 1, 3)
        self.shift = (
            -np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
        ).reshape(1, 1, 3)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = resize_center_crop(img.convert("RGB"), self.image_size)
        arr = np.asarray(img, dtype=np.float32) * self.scale + self.shift  # (H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # (3, H, W)
