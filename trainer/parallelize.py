"""Turn a two-tower model built on the meta device into a distributed, initialised model.

One wrapping order, pinned by ``tests/trainer/test_parallelize.py``:

1. the model is built on ``meta`` (no memory, no init); locked towers are frozen here
   (``trainer.locks``: ``requires_grad=False`` before any wrapper sees the parameters);
2. activation checkpointing per transformer block: each ``tower.blocks[i]`` is replaced by
   ``checkpoint_wrapper(block)`` (non-reentrant ``torch.utils.checkpoint``). The wrapper is an
   ordinary module, so the FSDP unit of step 3 contains it and recompute runs on the gathered
   parameters during backward, which is the composition torch 2.x documents for FSDP2;
3. optional ``torch.compile`` of each block (``module.compile()``, in place, keeps the FQNs);
4. ``fully_shard`` per block and per head unit (the ResNet's attention pool), then per tower
   (the stem, embeddings, norms, pooling head and projection that are in no other unit), then
   the root (``logit_scale``/``logit_bias``),
   each with ``MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)``; the root keeps its
   parameters gathered after forward (the backward needs them at once anyway);
5. ``to_empty`` on the real device, then the model's own initialisation, run by every rank on
   its own shards (seed all ranks alike; whether shards then equal a one-process init depends on
   the DTensor RNG support of the device, so checkpoints, not seeds, carry exact weights; on a
   CPU mesh the draw depends on the shard layout, so FSDP over 4 ranks and HSDP 2 x 2 start from
   different weights at the same seed: ``tests/trainer/test_hsdp.py`` starts both from a file).

``ddp`` replaces step 4 by ``replicate`` (``torch.distributed._composable.replicate_with_fsdp``:
FSDP2's machinery with a replicated placement, so mixed precision, gradient-sync control and
``clip_grad_norm_`` on DTensors work exactly as for ``fsdp``).

``hsdp`` is step 4 of ``fsdp`` on a 2-D mesh (``build_mesh``: dims ``("replicate", "shard")``,
shape ``(W / s, s)`` for shard size s): FSDP2's ``fully_shard`` shards each parameter over the
``shard`` dim (all-gather and reduce-scatter inside a group of s ranks) and replicates it over the
``replicate`` dim (gradients all-reduced across the W / s groups), the hybrid sharding of
Zhao et al. 2023 (PyTorch FSDP) and torchtitan's ``dp_replicate x dp_shard``. The model is the
same; only the mesh differs.

Locked parameters (``--lock-image`` / ``--lock-text``) stay in the same units, sharded like
the others and all-gathered for the forward: the choice that keeps one wrapping for every
layout. FSDP2 supports frozen parameters, also next to trainable ones in one unit (a partially
unlocked tower's own unit): it reduce-scatters the gradients of the parameters that have one
only, and a unit whose outputs need no grad registers no backward hook, so it is neither
re-gathered nor synchronised in backward. The cost is each locked unit's forward all-gather and
its fp32 shard (4·Ψ_locked / s bytes per rank), which ``vlscale.costs.memory`` and
``vlscale.plan.workload_builder`` price the same way. Fully locked blocks are not wrapped for
activation checkpointing: they save nothing to recompute.

What is wrapped and how comes from the run layout (``vlscale.specs.layout.RunLayout``): sharding,
precision, resharding after forward and activation checkpointing; ``layout.wrapped`` is the one
place of the one-rank rule (one fp32 rank runs the plain module).

``encode_image``, ``encode_text`` and ``logit_params`` (added here) are registered as FSDP forward
methods, so evaluation and the loss can call them on the root and still trigger the all-gathers.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import (
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
    register_fsdp_forward_method,
)

from trainer.locks import apply_locks, is_frozen
from vlscale.specs.layout import RunLayout

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORWARD_METHODS = ("encode_image", "encode_text", "logit_params")
HSDP_DIMS = ("replicate", "shard")
WORLD_DIMS = ("dp",)


def build_mesh(layout: RunLayout, device_type: str) -> DeviceMesh:
    """The parameter mesh of ``layout`` over the whole world (a collective: every rank calls it).

    ``ddp`` / ``fsdp``: 1-D ``("dp",)`` of W ranks. ``hsdp``: 2-D ``("replicate", "shard")`` of
    shape (W / s, s): ranks r with the same r // s form one shard group (consecutive ranks, so a
    shard group of s = devices per node stays on one node's links). On CPU (gloo) the mesh is an
    explicit CPU mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    if layout.sharding == "hsdp":
        shape = (layout.replicas, layout.shard_group)
        return init_device_mesh(device_type, shape, mesh_dim_names=HSDP_DIMS)
    return init_device_mesh(device_type, (layout.devices,), mesh_dim_names=WORLD_DIMS)


def check_mesh(mesh: DeviceMesh, layout: RunLayout) -> None:
    """``mesh`` is the one ``build_mesh(layout)`` makes (a mismatch is a programming error)."""
    want = (layout.replicas, layout.shard_group) if layout.sharding == "hsdp" else (layout.devices,)
    if tuple(mesh.shape) != want:
        raise ValueError(
            f"mesh of shape {tuple(mesh.shape)} for a {layout.sharding} layout on "
            f"{layout.devices} ranks (shard group {layout.shard_group}): want {want}"
        )


def towers(model: nn.Module) -> list[nn.Module]:
    """The image and text towers (``model.visual``, ``model.text``) that have parameters (the
    image tower's place holds none when its embeddings are precomputed), and SigLIP 2's
    caption decoder (``model.decoder``, ``models.siglip2``), wrapped like a tower: a unit per
    block, then the rest of it."""
    units = (model.visual, model.text, getattr(model, "decoder", None))
    return [t for t in units if t is not None and any(True for _ in t.parameters())]


def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every transformer block, image tower first."""
    for tower in towers(model):
        yield from tower.blocks


def head_units(model: nn.Module) -> Iterator[nn.Module]:
    """Heads wrapped as FSDP units of their own, so that each is gathered only while it runs:
    the ResNet tower's attention pool (a tenth of RN50x64's image tower, not held for the whole
    tower: ``vlscale.costs.layers.base.is_unit``, the planner's units are the same), and SigLIP
    2's distillation heads."""
    from models.resnet import ResNetTower

    for tower in towers(model):
        if isinstance(tower, ResNetTower):
            yield tower.pool
    # SigLIP 2's distillation and masked-prediction heads: units of their own, so that before
    # self-distillation starts (the heads idle) they are never gathered, as the planner counts
    # them (vlscale.costs.siglip2.student_extra_params: only in the phases they train in)
    for name in ("distill_head", "masked_head"):
        head = getattr(model, name, None)
        if head is not None:
            yield head


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Parameters and compute in ``precision``; gradient reduction always in fp32."""
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Step 2: wrap each block in place (``tower.blocks[i] = checkpoint_wrapper(block)``),
    but a locked one (it saves nothing)."""
    for tower in towers(model):
        for i, block in enumerate(tower.blocks):
            if is_frozen(block):
                continue
            tower.blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Step 3: compile each block in place (``nn.Module.compile`` keeps parameter names).

    ``backend`` is torch.compile's: ``inductor`` generates kernels (the point of ``--compile``;
    on CPU it builds C++ for ~25 s); ``aot_eager`` / ``eager`` run the captured graphs with eager
    kernels, so the wiring (what is compiled, graph capture through FSDP's hooks, autograd)
    is exercised in seconds (``tests/trainer/test_compile.py``)."""
    for block in blocks(model):
        block.compile(backend=backend)


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, layout: RunLayout) -> None:
    """Step 4: ``fully_shard`` blocks and head units, then towers, then the root (bottom-up, as
    FSDP2 needs).
    On a 2-D mesh (``hsdp``) FSDP2 shards over the last dim and replicates over the first."""
    mp = mixed_precision(layout.precision)
    reshard = layout.reshard_after_forward
    for unit in [*blocks(model), *head_units(model)]:
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    for tower in towers(model):
        fully_shard(tower, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def apply_ddp(model: nn.Module, mesh: DeviceMesh, layout: RunLayout) -> None:
    """Step 4 for ``ddp``: replicate blocks, towers and root with the same units as FSDP, so that
    gradient all-reduces overlap backward block by block."""
    from torch.distributed._composable.replicate_with_fsdp import replicate

    mp = mixed_precision(layout.precision)
    for module in [*blocks(model), *head_units(model), *towers(model), model]:
        replicate(module, mesh=mesh, mp_policy=mp)


def _logit_params(self: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit_scale, logit_bias), each shape (1,), as differentiable copies."""
    return self.logit_scale.clone(), self.logit_bias.clone()


def attach_logit_params(model: nn.Module) -> None:
    """Give the root a ``logit_params()`` method, registered below as an FSDP forward method.

    Outside a forward the root's ``logit_scale``/``logit_bias`` are sharded DTensors, and the
    loss needs the whole (1,) values with gradients that flow into FSDP's reduce-scatter like
    any other parameter's. Calling ``model.logit_params()`` runs FSDP's pre-forward (all-gather)
    and post-forward hooks around it, so it returns plain tensors with exactly that gradient
    path. ``clone`` matters: FSDP frees the root's all-gather buffer at the end of the root
    forward, so a parameter returned as is would point at freed memory.
    """
    model.logit_params = types.MethodType(_logit_params, model)


def register_forward_methods(model: nn.Module) -> None:
    """Let evaluation call ``model.encode_image`` / ``encode_text`` on the FSDP root."""
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)


def materialize(model: nn.Module, device: torch.device, init_fn: Callable[[nn.Module], None]):
    """Step 5: allocate real (sharded) storage and initialise it in place."""
    model.to_empty(device=device)
    with torch.no_grad():
        init_fn(model)


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh,
    layout: RunLayout,
    device: torch.device,
    init_fn: Callable[[nn.Module], None],
    compile_backend: str | None = None,
) -> nn.Module:
    """Apply steps 2-5 to a meta-device ``model`` as the resolved ``layout`` says, on ``mesh``
    (``build_mesh(layout)``); ``compile_backend`` None: no ``torch.compile``. Returns the same
    (now FSDP) module, or the plain module when ``layout.wrapped`` is False (one fp32 rank:
    nothing to shard, gather, reduce or cast; the wrapped model would compute the same at a
    cost, ``benchmarks/train_overhead.py``)."""
    check_mesh(mesh, layout)
    apply_locks(model, layout)
    if layout.checkpointing:
        apply_activation_checkpointing(model)
    if compile_backend is not None:
        apply_compile(model, compile_backend)
    attach_logit_params(model)
    if layout.wrapped:
        if layout.sharding == "ddp":
            apply_ddp(model, mesh, layout)
        else:  # fsdp on the 1-D mesh, hsdp on the 2-D one
            apply_fsdp(model, mesh, layout)
        register_forward_methods(model)
    materialize(model, device, init_fn)
    return model


def shard_teacher(
    teacher: nn.Module, mesh: DeviceMesh, layout: RunLayout, device: torch.device
) -> None:
    """SigLIP 2's EMA teacher (``models.siglip2.Teacher``, built on meta), sharded like the
    student under ``fsdp`` / ``hsdp``: ``fully_shard`` per image block, the tower, the root,
    on the same mesh and precision (forward only: resharded after it); under ``ddp`` and on one
    unwrapped rank a plain replica. Then storage on ``device``, left unset (the trainer copies
    the student into it or loads it)."""
    if layout.wrapped and layout.sharding != "ddp":
        mp = mixed_precision(layout.precision)
        for unit in [*teacher.visual.blocks, teacher.visual, teacher]:
            fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=True)
    teacher.to_empty(device=device)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Gradient accumulation: skip reduce-scatter / all-reduce on non-final micro-steps."""
    if isinstance(model, FSDPModule) or hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a possibly sharded parameter (a collective for DTensors: call it on
    every rank)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
