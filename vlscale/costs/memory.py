"""Per-device training memory, broken down, from a model spec, a recipe and a run layout.

All quantities are bytes per device. Ψ = parameters (``vlscale.costs.params``), s = shard degree
(``RunLayout.shard_group``: 1 for DDP, W for FSDP, the shard size for HSDP), W = world size,
p = bytes per element of ``precision``, b = local batch, B = b·W, e = embed_dim.

Model states (ZeRO, Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", Sec. 3.1 and ZeRO-3 = sharding all three over s). The layout is
that of the trainer (``trainer.parallelize``): FSDP2 ``fully_shard`` for s > 1, FSDP2's
``replicate`` for s = 1, ``MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=fp32)``.
FSDP2 keeps ONE persistent copy of each parameter, the fp32 shard, and casts it to ``precision``
only while gathering (PyTorch docs, "torch.distributed.fsdp.fully_shard", MixedPrecisionPolicy);
sharded gradients are cast back to the parameter's dtype after the reduce-scatter. Hence:

    params          4·Ψ/s if precision == fp32, else 0: no persistent low-precision copy exists
    master_weights  4·Ψ/s if precision != fp32: the fp32 shards, which the optimizer updates
    grads           4·Ψ/s (sharded gradients are fp32 whatever the compute precision)
    optimizer_state AdamW, LAMB: 2 fp32 moments 8·Ψ/s; Adafactor (Shazeer & Stern 2018, as
                    torch.optim.Adafactor): no first moment, second moment factored into a row
                    and a column vector for every tensor of rank >= 2 (over its last two dims),
                    full for vectors: 4·Σ_tensors(rows + cols | numel)/s (a per-device mean)

For mixed-precision AdamW this totals 16·Ψ/s, the ZeRO paper's 16Ψ, split 4 + 4 + 8 instead of
ZeRO's 2 (fp16 params) + 2 (fp16 grads) + 12 (fp32 master + moments).

FSDP unit buffers (PyTorch FSDP2 docs: each ``fully_shard`` unit all-gathers its parameters
before use and reduce-scatters its gradients after; the next unit is prefetched). Units are
those of ``trainer.parallelize``: every block, each tower's remaining parameters, the root::

    s > 1, reshard_after_forward      p·(U1 + U2)   the current and the prefetched next unit,
                                                    taken as the two largest units
    s > 1, not reshard_after_forward  p·Ψ           every unit stays gathered until backward
    s = 1 (replicate, never reshards) p·Ψ if precision != fp32 (the cast copies), else 0
    plus, in backward, one unit's gradients while they are reduced: its unsharded gradients
    in ``precision`` and the fp32 reduce-scatter (all-reduce) input, (p + 4)·U1
    not wrapped (``RunLayout.wrapped`` False: one fp32 rank runs the plain module)   0

HSDP (shard size s, R = W / s replicas) holds what FSDP over s ranks holds: the replicas'
gradient all-reduce works on the reduce-scattered fp32 shard in place. An unwrapped rank keeps
plain ``.grad`` tensors (4·Ψ, as the sharded fp32 gradients at s = 1) and no unit buffers.

Activations: ``vlscale.costs.activations`` (Korthikanti et al. 2022 style, per saved tensor).
Locked towers (``vlscale.costs.locks``; Ψ_T the trainable parameters, Ψ_L = Ψ − Ψ_T): grads,
optimizer state and master weights count Ψ_T only; a locked parameter keeps its one fp32 shard
(params 4·Ψ_L/s in mixed precision too: FSDP2 casts it while gathering, as any other); it is
still gathered for the forward, so the gathered-unit buffers do not change, but only trainable
parameters' gradients are reduced; locked layers save no activations. With precomputed image
embeddings (``layout.image_embeddings``) the image tower is not on the devices at all: its
parameters and units leave every term.

Loss buffers: :func:`loss_buffer_bytes`. ``overhead`` is a flat allowance for what the
allocator does not see or cannot reuse: the CUDA context, NCCL communicator buffers, the caching
allocator's fragmentation (default 1 GiB; calibrate it per device).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vlscale.costs.activations import activation_bytes
from vlscale.costs.dtypes import FP32, REDUCE_BYTES
from vlscale.costs.locks import trainable_layers, trainable_shapes, trainable_unit_params
from vlscale.costs.loss_buffers import loss_buffer_bytes
from vlscale.costs.params import count_params, parameter_shapes, unit_params
from vlscale.errors import ConfigError
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import BYTES_PER_ELEMENT, RecipeSpec

DEFAULT_OVERHEAD_BYTES = 1 << 30
OPTIMIZERS = ("adamw", "lamb", "adafactor")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device by category (see the module docstring for each formula)."""

    params: int
    grads: int
    optimizer_state: int
    master_weights: int
    fsdp_buffers: int
    activations: int
    loss_buffers: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def as_dict(self) -> dict[str, int]:
        """Category name -> bytes, in field order (``total`` not included)."""
        return asdict(self)


def estimate_memory(
    spec: ModelSpec,
    layout: RunLayout,
    recipe: RecipeSpec,
    *,
    local_batch: int,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> MemoryBreakdown:
    """Peak training memory per device, as the sum of the categories of ``MemoryBreakdown``.

    ``layout`` is resolved (``RunLayout.resolved``: precision and HSDP shard size known);
    ``local_batch`` is what one forward sees (the micro-batch). Model states shard over
    s = ``layout.shard_group`` (DDP 1, FSDP W, HSDP its shard size); the loss spans all W ranks.
    The categories are summed as if all peaked at once (an upper bound: e.g. the FSDP buffers of
    forward and the loss buffers never coexist in full).
    """
    if local_batch < 1:
        raise ConfigError("local_batch", f"must be >= 1, got {local_batch}")
    if overhead_bytes < 0:
        raise ConfigError("overhead_bytes", f"must be >= 0, got {overhead_bytes}")
    psi = _present_params(spec, layout)
    trained = _trainable_params(spec, layout)
    s, precision = layout.shard_group, layout.precision
    mixed = precision != "fp32"
    acts = _activations(spec, layout, local_batch, recipe.mask_ratio)
    return MemoryBreakdown(
        # mixed precision: the locked parameters' fp32 shards are their only copy
        params=_ceil_div(FP32 * (psi - trained if mixed else psi), s),
        grads=_ceil_div(FP32 * trained, s),
        optimizer_state=optimizer_state_bytes(spec, recipe.optimizer, s, layout),
        master_weights=_ceil_div(FP32 * trained, s) if mixed else 0,
        fsdp_buffers=fsdp_buffer_bytes(spec, s, precision, layout.reshard_after_forward, layout)
        if layout.wrapped
        else 0,
        activations=sum(acts.values()),
        loss_buffers=loss_buffer_bytes(
            recipe.loss, recipe.loss_impl, local_batch, layout.devices, spec.embed_dim
        ),
        overhead=overhead_bytes,
    )


def _present_params(spec: ModelSpec, layout: RunLayout) -> int:
    """Ψ on the devices: all, less the image tower when its embeddings are precomputed."""
    counts = count_params(spec)
    return counts.total - (counts.image if layout.precomputed_image else 0)


def _trainable_params(spec: ModelSpec, layout: RunLayout) -> int:
    """Ψ_T: the parameters that train (all of Ψ unless a tower is locked, ``costs.locks``)."""
    if not layout.locks:
        return count_params(spec).total
    return sum(trainable_unit_params(spec, layout).values())


def _activations(spec: ModelSpec, layout: RunLayout, local_batch: int, mask_ratio: float):
    """Activation bytes by tower; a locked layer saves nothing (``costs.locks``)."""
    trainable = trainable_layers(spec, layout, mask_ratio) if layout.locks else None
    return activation_bytes(
        spec, local_batch, layout.precision, layout.checkpointing, mask_ratio, trainable
    )


def fsdp_units(spec: ModelSpec) -> dict[str, int]:
    """Parameters per FSDP unit by name, as ``trainer.parallelize`` wraps: every block of both
    towers ("visual.blocks.i", "text.blocks.i", the names of ``vlscale.costs.ops.unit_ops``),
    each tower's non-block parameters ("visual", "text") and the root ("root": ``logit_scale``,
    ``logit_bias``), in that order."""
    return unit_params(spec)


def fsdp_unit_params(spec: ModelSpec) -> list[int]:
    """Parameters per FSDP unit (:func:`fsdp_units`' values: blocks, tower rests, root)."""
    return list(fsdp_units(spec).values())


def fsdp_buffer_bytes(
    spec: ModelSpec,
    shard_degree: int,
    precision: str,
    reshard_after_forward: bool = True,
    layout: RunLayout | None = None,
) -> int:
    """Gathered parameters of the units in flight plus one unit's gradients being reduced: the
    largest unit's, or with locked towers (``layout``) the largest trainable part of a unit's."""
    present = fsdp_units(spec)
    if layout is not None and layout.precomputed_image:
        present = {k: v for k, v in present.items() if k.split(".")[0] != "visual"}
    reduced = None
    if layout is not None and layout.locks:
        reduced = max(trainable_unit_params(spec, layout).values())
    return unit_buffer_bytes(present, shard_degree, precision, reshard_after_forward, reduced)


def unit_buffer_bytes(
    present: dict[str, int],
    shard_degree: int,
    precision: str,
    reshard_after_forward: bool = True,
    reduced: int | None = None,
) -> int:
    """:func:`fsdp_buffer_bytes` over the units ``present`` (name -> parameters); ``reduced``
    the largest unit's trainable parameters when not all train (None: the largest unit)."""
    p = BYTES_PER_ELEMENT[precision]
    units = sorted(present.values(), reverse=True)
    total = sum(units)
    if shard_degree == 1:
        gathered = p * total if precision != "fp32" else 0
    elif reshard_after_forward:
        gathered = p * (units[0] + units[1])
    else:
        gathered = p * total
    return gathered + (p + REDUCE_BYTES) * (units[0] if reduced is None else reduced)


def max_local_batch(
    spec: ModelSpec,
    device_memory_bytes: int,
    layout: RunLayout,
    recipe: RecipeSpec,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    memory=None,
) -> int:
    """The largest local batch whose :func:`estimate_memory` total fits ``device_memory_bytes``
    (``memory(b)``, the bytes at local batch b, in its place when given: a SigLIP 2 phase's).

    Memory is monotone in the batch, so an exponential search brackets the answer and a binary
    search finds it. Raises ``ConfigError`` when not even a batch of 1 fits.
    """
    if device_memory_bytes <= 0:
        raise ConfigError("device_memory_bytes", f"must be > 0, got {device_memory_bytes}")

    def need(b: int) -> int:
        if memory is not None:
            return memory(b)
        return estimate_memory(
            spec, layout, recipe, local_batch=b, overhead_bytes=overhead_bytes
        ).total

    def fits(b: int) -> bool:
        return need(b) <= device_memory_bytes

    if not fits(1):
        raise ConfigError(
            "shard_size" if layout.sharding == "hsdp" else "sharding",
            f"{spec.name} does not fit even at local batch 1 ({need(1) / 2**30:.1f} GiB needed, "
            f"{device_memory_bytes / 2**30:.1f} GiB available); shard over more ranks, enable "
            "checkpointing, use bf16, or pick a device with more memory",
        )
    lo, hi = 1, 2  # fits(lo) holds; grow hi until it does not
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1 << 40:
            raise ConfigError("device_memory_bytes", "unbounded batch: memory does not grow")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# --- optimizer state -------------------------------------------------------------------------


def optimizer_state_elements(spec: ModelSpec, optimizer: str) -> int:
    """fp32 elements of optimizer state for the whole (unsharded) model."""
    if optimizer in ("adamw", "lamb"):
        return 2 * count_params(spec).total
    if optimizer == "adafactor":
        return sum(adafactor_elements(shape) for shape in parameter_shapes(spec))
    raise ConfigError("optimizer", f"unknown optimizer '{optimizer}'; use one of {OPTIMIZERS}")


def optimizer_state_bytes(
    spec: ModelSpec, optimizer: str, shard_degree: int, layout: RunLayout | None = None
) -> int:
    """fp32 optimizer state per device when parameters are sharded on dim 0 over ``shard_degree``.

    AdamW / LAMB moments shard with their parameters: 2·4·Ψ / s. Adafactor
    (``trainer.optim.adafactor``) keeps, per 2-D matrix (r, c), a row factor sharded with the
    rows (r / s) and a column factor that every rank holds whole (c, identical on all ranks);
    vectors and the factors of 3+-D tensors (whose dim 0 is a leading index) shard: so
    4 · (Σ_2-D (r / s + c) + Σ_other n / s). With locked towers (``layout``) only the
    trainable parameters have state.
    """
    locked = layout is not None and layout.locks
    if optimizer != "adafactor":
        if locked and optimizer in ("adamw", "lamb"):
            return _ceil_div(2 * FP32 * _trainable_params(spec, layout), shard_degree)
        return _ceil_div(optimizer_state_elements(spec, optimizer) * FP32, shard_degree)
    sharded = replicated = 0
    for shape in trainable_shapes(spec, layout) if locked else parameter_shapes(spec):
        if len(shape) == 2:
            sharded += shape[0]
            replicated += shape[1]
        else:
            sharded += adafactor_elements(shape)
    return FP32 * (_ceil_div(sharded, shard_degree) + replicated)


def adafactor_elements(shape: tuple[int, ...]) -> int:
    """torch.optim.Adafactor: row variance (last dim reduced) + column variance (second to last
    reduced) for rank >= 2; the full variance for vectors."""
    if len(shape) < 2:
        return math.prod(shape)
    lead = math.prod(shape[:-2])
    return lead * shape[-2] + lead * shape[-1]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
