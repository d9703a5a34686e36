"""Loss-phase memory per rank: CLIP gather vs SigLIP gather vs SigLIP ring, as b and W grow.

Runs W gloo CPU processes (tests/dist_utils.run_distributed) and, on every rank, one
forward + backward of each loss on random unit embeddings (fp32, d = 64). Two measured figures
for rank 0, after a warm-up call (ring group creation, gloo connections):

* saved:  bytes autograd keeps for backward, unique storages (trainer.losses.saved_memory);
* peak:   the CPU allocator's high-water mark above its level at the start of the loss phase,
          forward + backward, from torch.profiler's memory events (profile_memory=True,
          "Total Allocated" of each [memory] event in the exported trace);
* ms:     wall time of one unprofiled forward + backward (gloo on a shared CPU: indicative only).

Expected shape of the result: both gathers grow with W·b (a b × B logit block, B = W·b; CLIP
keeps two, one per direction), the ring stays at O(b² + b·d) whatever W is.

    .venv/bin/python benchmarks/loss_memory.py            # b = 64, 256, 1024 at W = 2, 4
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, for trainer/ and tests/

import torch
import torch.nn.functional as F

from tests.dist_utils import run_distributed
from trainer.losses import clip_loss, siglip_loss
from trainer.losses.saved_memory import SavedTensorBytes, allocator_peak_bytes

DIM = 64
LOCAL_BATCHES = (64, 256, 1024)
WORLDS = (2, 4)
IMPLS = ("clip-gather", "siglip-gather", "siglip-ring")


def _loss_step(impl: str, b: int, group, seed: int) -> tuple[torch.Tensor, SavedTensorBytes]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, DIM, generator=g), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(b, DIM, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor([2.3], requires_grad=True)
    bias = torch.tensor([-10.0], requires_grad=True)
    with SavedTensorBytes() as saved:
        if impl == "clip-gather":
            loss = clip_loss(x, y, scale, group=group)
        else:
            loss = siglip_loss(x, y, scale, bias, group=group, impl=impl.split("-")[1])
    loss.backward()
    return loss, saved


def _peak_bytes(impl: str, b: int, group, seed: int) -> int:
    """Allocator high-water mark during forward + backward, above the level at its start."""
    return allocator_peak_bytes(lambda: _loss_step(impl, b, group, seed))


def _measure(ctx) -> list[dict]:
    group = ctx.mesh.get_group("dp")
    rows = []
    for b in LOCAL_BATCHES:
        for impl in IMPLS:
            _loss_step(impl, b, group, seed=0)  # warm-up
            t0 = time.perf_counter()
            _, saved = _loss_step(impl, b, group, seed=1)
            ms = 1e3 * (time.perf_counter() - t0)
            peak = _peak_bytes(impl, b, group, seed=2)
            rows.append({"b": b, "impl": impl, "saved": saved.bytes, "peak": peak, "ms": ms})
    return rows


def main() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault(
        "KINETO_LOG_LEVEL", "5"
    )  # children inherit: no profiler start/stop chatter
    t0 = time.perf_counter()
    print(f"loss-phase memory per rank (rank 0), fp32, d = {DIM}; KiB = 1024 bytes")
    header = (
        f"{'W':>2} {'b':>5} {'B':>5}  {'impl':<14} {'saved KiB':>10} {'peak KiB':>10} {'ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for world in WORLDS:
        for row in run_distributed(_measure, world, timeout=300)[0]:
            print(
                f"{world:>2} {row['b']:>5} {world * row['b']:>5}  {row['impl']:<14} "
                f"{row['saved'] / 1024:>10.1f} {row['peak'] / 1024:>10.1f} {row['ms']:>8.1f}"
            )
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
