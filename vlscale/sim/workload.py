"""The workload: every duration the step simulator needs, and nothing else (the contract).

A builder (written elsewhere, from ``vlscale.specs`` and ``vlscale.costs``) fills a
:class:`Workload`; the simulator never looks at model shapes, FLOPs or bandwidths. All times are
seconds on ONE rank, for ONE step, at nominal speed (no straggling): the simulator scales compute
by a per-rank slowdown and never rescales communication.

Step anatomy (``vlscale.sim.program`` turns it into ops on three streams per rank)::

    forward   units[0] .. units[n-1]       compute: Unit.forward_s
    loss      one of the LossPhase kinds   (collective or P2P ops + loss compute)
    backward  units[n-1] .. units[0]       compute: Unit.backward_s (include AC recompute here)
    optimizer                              compute: Workload.optimizer_s
    (host_s, before everything: serial host work such as a synchronous data load)

A *unit* is whatever the builder wraps as one FSDP unit (one transformer block, or a tower's
embeddings/head); units of both towers go in one list, in forward order. The field semantics:

``Unit.all_gather_s``     FSDP: gather this unit's full parameters (issued once in forward and, when
                          ``reshard_after_forward``, again in backward). Ignored for DDP.
``Unit.reduce_scatter_s`` FSDP: reduce-scatter this unit's gradients after its backward. Ignored
                          for DDP.
``Unit.all_reduce_s``     DDP: all-reduce of this unit's gradients; each unit is one DDP bucket, so
                          the builder should size units like buckets. Ignored for FSDP.

Loss phases (the gathered/ring tensors are the L2-normalised embeddings, local batch b, world W):

``ClipGatherLoss``   CLIP local loss with ``gather_with_grad``: two all-gathers (image and text
                     embeddings, ``all_gather_s`` each), loss forward, loss backward, then two
                     reduce-scatters (``reduce_scatter_s`` each) hand each rank its embedding grads.
``SiglipGatherLoss`` the same with one all-gather (texts) and one reduce-scatter.
``SiglipRingLoss``   the chunked sigmoid loss: W blocks of b×b in forward (the local text block,
                     then W−1 blocks received by ``hop_s`` neighbour hops, double-buffered so a hop
                     overlaps the previous block's compute) and again in backward, where each
                     text block's gradient accumulator follows it around the ring (``grad_hop_s``
                     after each block, W hops in all, the last one bringing it home).

The input pipeline (``InputPipeline``) is optional: without it every batch is ready at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlscale.errors import ConfigError, validate_as

Seconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Unit(_Frozen):
    """One FSDP unit / DDP bucket: its compute and the collectives that move its tensors."""

    name: str = "unit"
    forward_s: Seconds
    backward_s: Seconds
    all_gather_s: Seconds = 0.0
    reduce_scatter_s: Seconds = 0.0
    all_reduce_s: Seconds = 0.0
    frozen: bool = False  # every parameter locked: no backward re-gather (nothing to compute)


class _GatherLoss(_Frozen):
    """Durations shared by the gather implementations (the kind says how many collectives)."""

    all_gather_s: Seconds = 0.0
    forward_s: Seconds = 0.0
    backward_s: Seconds = 0.0
    reduce_scatter_s: Seconds = 0.0


class ClipGatherLoss(_GatherLoss):
    """Softmax InfoNCE with gathered image AND text embeddings (two all-gathers, two RS)."""

    kind: Literal["clip_gather"] = "clip_gather"


class SiglipGatherLoss(_GatherLoss):
    """Sigmoid loss over a b×B block with gathered texts (one all-gather, one RS)."""

    kind: Literal["siglip_gather"] = "siglip_gather"


class SiglipRingLoss(_Frozen):
    """Chunked sigmoid loss: W b×b blocks per pass, W−1 text hops, W gradient hops in backward."""

    kind: Literal["siglip_ring"] = "siglip_ring"
    hop_s: Seconds = 0.0
    grad_hop_s: Seconds = 0.0
    block_forward_s: Seconds = 0.0
    block_backward_s: Seconds = 0.0


LossPhase = Annotated[
    ClipGatherLoss | SiglipGatherLoss | SiglipRingLoss, Field(discriminator="kind")
]


class InputPipeline(_Frozen):
    """Decode workers feeding a bounded queue of ready batches (like a torch DataLoader).

    Each of ``workers`` builds whole batches, one at a time, taking ``batch_decode_s`` per batch
    (times a lognormal jitter exp(σZ) when ``jitter_sigma`` > 0); a finished batch waits for a free
    slot among ``queue_depth`` before the worker starts the next one.
    """

    workers: int = Field(default=1, ge=1)
    batch_decode_s: Seconds
    queue_depth: int = Field(default=2, ge=1)
    jitter_sigma: float = Field(default=0.0, ge=0.0, le=3.0)


class Workload(_Frozen):
    """Everything one training step costs, as durations on one rank (see the module docstring)."""

    name: str = "workload"
    world_size: int = Field(ge=1)
    local_batch: int = Field(default=1, ge=1)
    strategy: Literal["fsdp", "ddp"] = "fsdp"
    reshard_after_forward: bool = True
    units: tuple[Unit, ...] = Field(min_length=1)
    loss: LossPhase | None = None
    grad_norm_all_reduce_s: Seconds = 0.0
    optimizer_s: Seconds = 0.0
    host_s: Seconds = 0.0  # serial host work at the step's start (synchronous data, bookkeeping)
    input: InputPipeline | None = None

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size


def make_workload(data: dict | Workload) -> Workload:
    """Validate ``data`` into a :class:`Workload`; bad input raises one :class:`ConfigError`."""
    return validate_as(Workload, data, "workload")


def require_workload(obj: object) -> Workload:
    """Accept a Workload or a dict; anything else names the fix."""
    if isinstance(obj, Workload | dict):
        return make_workload(obj)
    raise ConfigError("workload", f"expected a Workload or a dict, got {type(obj).__name__}")
