"""CLIP's ResNet presets (Radford et al. 2021), named and shaped as OpenCLIP's model configs.

Each mirrors ``open_clip/model_configs/<name>.json``: ``vision_cfg.layers`` (blocks per stage),
``width`` (64 x the width multiplier), ``image_size``, ``embed_dim`` and the text tower (causal,
EOS pooling, 77 tokens, OpenAI BPE), all with OpenCLIP's defaults: attention-pool heads
``width * 32 / 64``, batch-norm epsilon 1e-5 (torch's ``nn.BatchNorm2d``), LayerNorm 1e-5.

``tiny-rn`` is a vlscale test preset: small enough to build and train on a CPU in seconds.

Kept apart from ``presets.py`` so that they move into the YAML preset data in one piece.
"""

from __future__ import annotations

from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import ResNetTowerSpec, TextTowerSpec, TrunkSpec

OPENCLIP_VOCAB = 49408  # OpenAI CLIP BPE
BYTE_VOCAB = 260  # the trainer's byte-level tokenizer (as the other tiny presets)
_OC = "OpenCLIP model_configs/{}.json"


def resnet(image: int, layers: tuple[int, int, int, int], width: int) -> ResNetTowerSpec:
    """OpenCLIP's ``ModifiedResNet`` with its defaults (head width 64, batch-norm eps 1e-5)."""
    return ResNetTowerSpec(image_size=image, layers=layers, width=width)


def _text(width: int, heads: int, *, depth: int = 12, vocab=OPENCLIP_VOCAB, context=77):
    trunk = TrunkSpec(width=width, depth=depth, heads=heads, mlp_width=4 * width, norm_eps=1e-5)
    return TextTowerSpec(vocab_size=vocab, context_length=context, trunk=trunk)


def resnet_presets() -> list[ModelSpec]:
    """RN50 ... RN50x64 and tiny-rn, in catalogue order."""
    rows = [
        # name, image size, blocks per stage, width, embed_dim, text width, text heads
        ("RN50", 224, (3, 4, 6, 3), 64, 1024, 512, 8),
        ("RN101", 224, (3, 4, 23, 3), 64, 512, 512, 8),
        ("RN50x4", 288, (4, 6, 10, 6), 80, 640, 640, 10),
        ("RN50x16", 384, (6, 8, 18, 8), 96, 768, 768, 12),
        ("RN50x64", 448, (3, 15, 36, 10), 128, 1024, 1024, 16),
    ]
    specs = [
        ModelSpec(
            name=name,
            vision=resnet(image, layers, width),
            text=_text(text_width, text_heads),
            embed_dim=embed_dim,
            source=_OC.format(name),
        )
        for name, image, layers, width, embed_dim, text_width, text_heads in rows
    ]
    specs.append(
        ModelSpec(
            name="tiny-rn",
            vision=resnet(64, (1, 1, 1, 1), 8),
            text=_text(64, 4, depth=2, vocab=BYTE_VOCAB, context=32),
            embed_dim=32,
            source="vlscale test preset",
        )
    )
    return specs
