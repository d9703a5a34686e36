"""Write a dataset's image embeddings once, for training with a locked, absent image tower.

    python -m trainer.embed --model M [--init-from FILE] --data DATA --out DIR [--samples N]

Runs the image tower of ``M`` (weights from an OpenCLIP file, ``--init-from``; without it the
model's own initialisation, which is useful for tests only) in eval mode over ``--samples``
samples of ``--data`` (any ``trainer.data`` source), in batches on one process, and writes the
features (not normalised) with each sample's caption tokens as ``trainer.data.embeddings``
shards. Train on them with ``--image-embeddings DIR``. Bad input is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from trainer.cli_args import OneLineParser
from vlscale.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m trainer.embed", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model preset (the trainer's --model)")
    p.add_argument("--init-from", default=None, help="OpenCLIP weights file (.pt/.safetensors)")
    p.add_argument("--data", default="shapes", help="the trainer's --data")
    p.add_argument("--out", required=True, help="the directory to write (must not exist)")
    p.add_argument("--samples", type=int, default=1024, help="samples to embed")
    p.add_argument("--batch", type=int, default=64, help="samples per forward")
    p.add_argument("--tokenizer", default="byte", help="the trainer's --tokenizer")
    p.add_argument("--shard-size", type=int, default=65536, help="samples per shard")
    p.add_argument("--seed", type=int, default=0)
    return p


def embed(args: argparse.Namespace) -> dict:
    """Embed ``args.samples`` samples; returns the written index."""
    import torch

    from models import build_model
    from trainer.data import build_loader
    from trainer.data.embeddings import EmbeddingWriter
    from trainer.tokenizer import build_tokenizer
    from vlscale.specs.presets import resolve_model

    for field in ("samples", "batch", "shard_size"):
        if getattr(args, field) < 1:
            raise ConfigError(field, f"must be >= 1, got {getattr(args, field)}")
    spec = resolve_model(args.model)
    torch.manual_seed(args.seed)
    model = build_model(spec).eval()
    if args.init_from:
        from trainer.init_from import load_openclip_weights

        load_openclip_weights(model, args.init_from, field="init_from")
    tokenizer = build_tokenizer(
        args.tokenizer, context_length=spec.text.context_length, vocab_size=spec.text.vocab_size
    )
    loader = build_loader(
        args.data, tokenizer, image_size=spec.vision.image_size, batch_size=args.batch
    )
    writer = EmbeddingWriter(args.out, model=spec.name, shard_size=args.shard_size)
    left = args.samples
    try:
        with torch.no_grad():
            while left > 0:
                images, tokens = next(loader)
                images, tokens = images[:left], tokens[:left]
                writer.add(model.encode_image(images, normalize=False), tokens)
                left -= len(images)
    finally:
        loader.close()
    return writer.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        index = embed(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {index['count']} embeddings of width {index['width']} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
