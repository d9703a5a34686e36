"""The run layout: how one training step is spread over devices, written once for both halves.

A :class:`RunLayout` says how many ranks run, how they are grouped (``ddp``, ``fsdp`` or
``hsdp``), in what precision, with or without activation checkpointing, and in how many
micro-steps a step is accumulated. The planner (``vlscale.plan``), the trainer
(``trainer.parallelize``, ``trainer.preflight``) and the run records (header ``layout``) hold
this object itself, never a copy of its fields.

Sharding, with W ranks and shard group size s (ZeRO: Rajbhandari et al. 2020; PyTorch FSDP:
Zhao et al. 2023, "hybrid sharding"; torchtitan's ``dp_replicate × dp_shard``):

    ddp    s = 1      every rank holds everything; gradients all-reduced over W
    fsdp   s = W      parameters, gradients and optimizer state sharded over all W ranks
    hsdp   1 ≤ s ≤ W  sharded inside groups of s ranks (all-gather / reduce-scatter there),
                      replicated across the W / s groups (gradient all-reduce across replicas)

``shard_size`` defaults to the devices per node, so that the frequent collectives stay on the
node's fast links. ``wrapped`` is the one place of the wrapping rule: one fp32 rank runs the
plain module (nothing to shard, gather, reduce or cast).

Locked towers (LiT, Zhai et al. 2022; SigLiT, Zhai et al. 2023; OpenCLIP's ``--lock-image``,
``--lock-text``) are part of the layout too: which parameters train decides what every rank
holds (no gradients, optimizer state or master copies for a locked parameter) and what is
communicated (no reduce-scatter / all-reduce for a locked unit). The groups of a tower that
``lock_*_unlocked_*`` leaves trainable are OpenCLIP's, counted from the end
(``vlscale.costs.locks`` says which parameters each group holds).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlscale.errors import ConfigError
from vlscale.specs.fields import Count, Groups
from vlscale.specs.recipes import Precision

Sharding = Literal["ddp", "fsdp", "hsdp"]
SHARDINGS: tuple[str, ...] = ("ddp", "fsdp", "hsdp")


class RunLayout(BaseModel):
    """How a step is laid out on ``devices`` ranks (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: Count = Field(default=1, description="ranks in the run (the world size)")
    devices_per_node: Count | None = Field(
        default=None, description="ranks per node (None: the device's node / torchrun's)"
    )
    sharding: Sharding = Field(default="fsdp", description="ddp | fsdp | hsdp")
    shard_size: Count | None = Field(
        default=None, description="hsdp: ranks per shard group (None: the devices per node)"
    )
    reshard_after_forward: bool = Field(
        default=True, description="free gathered parameters after forward (ZeRO-3, not ZeRO-2)"
    )
    precision: Precision | None = Field(
        default=None, description="parameter and compute dtype (None: the device's default)"
    )
    checkpointing: bool = Field(default=False, description="activation checkpointing per block")
    grad_accum: Count = Field(default=1, description="micro-steps per optimizer step")
    wrap_one_rank: bool = Field(
        default=False,
        description="wrap even one fp32 rank (what trainers before the wrapping rule did)",
    )
    lock_image: bool = Field(
        default=False, description="freeze the image tower (LiT; OpenCLIP's --lock-image)"
    )
    lock_image_unlocked_groups: Groups = Field(
        default=0, description="with lock_image: leave the last N layer groups trainable"
    )
    lock_image_freeze_bn_stats: bool = Field(
        default=False,
        description="with lock_image: keep batch-norm running statistics frozen (ResNet towers)",
    )
    image_embeddings: str | None = Field(
        default=None,
        description="train from precomputed image embeddings, the image tower out of the step "
        "(trainer: the directory python -m trainer.embed wrote; planner: precomputed)",
    )
    lock_text: bool = Field(default=False, description="freeze the text tower")
    lock_text_unlocked_layers: Groups = Field(
        default=0, description="with lock_text: leave the last N layer groups trainable"
    )

    @model_validator(mode="before")
    @classmethod
    def _embeddings_lock_the_image_tower(cls, data):
        """Precomputed image embeddings mean a locked image tower (SigLiT): one whole group."""
        if isinstance(data, dict) and data.get("image_embeddings") is not None:
            if data.get("lock_image_unlocked_groups"):
                raise ConfigError(
                    "image_embeddings",
                    "contradicts --lock-image-unlocked-groups: with precomputed embeddings the "
                    "image tower is not in the step, so none of it trains; drop one of the two",
                )
            data = data | {"lock_image": True}
        return data

    @model_validator(mode="after")
    def _check(self) -> RunLayout:
        if self.shard_size is not None and self.sharding != "hsdp":
            raise ConfigError(
                "shard_size", f"applies to --sharding hsdp only (sharding is {self.sharding})"
            )
        if self.shard_size is not None and self.devices % self.shard_size:
            raise ConfigError(
                "shard_size",
                f"{self.shard_size} does not divide devices={self.devices}; use a divisor, "
                f"e.g. {_divisor_near(self.devices, self.shard_size)}",
            )
        for field, tower in (
            ("lock_image_unlocked_groups", "image"),
            ("lock_image_freeze_bn_stats", "image"),
            ("lock_text_unlocked_layers", "text"),
        ):
            if getattr(self, field) and not getattr(self, f"lock_{tower}"):
                raise ConfigError(field, f"applies with --lock-{tower} only; add --lock-{tower}")
        return self

    @property
    def precomputed_image(self) -> bool:
        """Whether the image tower is out of the step (precomputed embeddings)."""
        return self.image_embeddings is not None

    @property
    def locks(self) -> bool:
        """Whether any parameter is frozen."""
        return self.lock_image or self.lock_text

    # --- resolution -------------------------------------------------------------------------

    def resolved(self, precision: str, devices_per_node: int) -> RunLayout:
        """This layout with its defaults filled in: the precision, the devices per node, and for
        ``hsdp`` the shard size (the devices per node unless given)."""
        update: dict = {}
        if self.precision is None:
            update["precision"] = precision
        if self.devices_per_node is None:
            update["devices_per_node"] = min(devices_per_node, self.devices)
        layout = self.model_copy(update=update)
        if layout.sharding == "hsdp" and layout.shard_size is None:
            size = layout.devices_per_node or 1
            if layout.devices % size:
                raise ConfigError(
                    "shard_size",
                    f"the default ({size} devices per node) does not divide devices="
                    f"{self.devices}; pass --shard-size, e.g. {_divisor_near(self.devices, size)}",
                )
            layout = layout.model_copy(update={"shard_size": size})
        return RunLayout.model_validate(layout.model_dump())

    # --- derived ----------------------------------------------------------------------------

    @property
    def shard_group(self) -> int:
        """Ranks that share one copy of the parameters (the shard degree s)."""
        if self.sharding == "ddp":
            return 1
        if self.sharding == "fsdp":
            return self.devices
        if self.shard_size is None:
            raise ConfigError("shard_size", "unresolved; call RunLayout.resolved() first")
        return self.shard_size

    @property
    def replicas(self) -> int:
        """Copies of the parameters (W / s): the gradient all-reduce group size."""
        return self.devices // self.shard_group

    @property
    def wrapped(self) -> bool:
        """Whether the model is wrapped at all (FSDP2's ``fully_shard`` / ``replicate``).

        One rank in fp32 runs the plain module: there is nothing to shard, gather or reduce,
        and no mixed precision to apply, so the wrapper would only add copies and DTensor
        dispatch (``benchmarks/train_overhead.py``). Anything else is wrapped."""
        if self.precision is None:
            raise ConfigError("precision", "unresolved; call RunLayout.resolved() first")
        return self.wrap_one_rank or self.devices > 1 or self.precision != "fp32"

    def local_batch(self, global_batch: int) -> int:
        """Samples per rank per optimizer step (all micro-steps): B / W."""
        return global_batch // self.devices

    def micro_batch(self, global_batch: int) -> int:
        """Samples per rank per micro-step: B / (W · grad_accum)."""
        return global_batch // (self.devices * self.grad_accum)

    def check_batch(self, global_batch: int) -> None:
        """B must split evenly over ranks and micro-steps; one ConfigError naming the field."""
        if global_batch % self.devices:
            near = max(1, round(global_batch / self.devices)) * self.devices
            raise ConfigError(
                "global_batch",
                f"{global_batch} is not divisible by devices={self.devices}; use a multiple of "
                f"{self.devices}, e.g. {near}",
            )
        if self.local_batch(global_batch) % self.grad_accum:
            raise ConfigError(
                "grad_accum",
                f"the local batch {self.local_batch(global_batch)} is not divisible by "
                f"grad_accum={self.grad_accum}; use a grad_accum that divides it",
            )


def hsdp_shard_sizes(devices: int, devices_per_node: int | None = None) -> list[int]:
    """Every shard size HSDP can take on ``devices`` ranks other than the two ends (1 is DDP,
    ``devices`` is FSDP): the divisors strictly between them. With ``devices_per_node`` (the
    planner's island: a GPU node or TPU slice), only those that divide a node or are whole
    nodes, the groups ``vlscale.costs.topology.check_shard_size`` accepts."""
    sizes = [s for s in range(2, devices) if devices % s == 0]
    if devices_per_node is None:
        return sizes
    node = min(devices_per_node, devices)
    return [s for s in sizes if fits_island(s, node)]


def fits_island(shard_size: int, island: int) -> bool:
    """Whether a shard group of ``shard_size`` ranks lies inside one island (a GPU node, a TPU
    slice: it divides it) or is whole islands (a multiple of it), so that one tier describes its
    links; a group straddling islands is neither."""
    return island % shard_size == 0 or shard_size % island == 0


def _divisor_near(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))
