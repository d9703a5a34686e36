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
    """Callable PIL image -> normalised float tensor (3, image_size, image_size)."""

    def __init__(self, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = resize_center_crop(img.convert("RGB"), self.image_size)
        arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        return (x - self.mean) / self.std
