"""Turn a two-tower model built on the meta device into a distributed, initialised model.

One wrapping order, pinned by ``tests/trainer/test_parallelize.py``:

1. the model is built on ``meta`` (no memory, no init);
2. activation checkpointing per transformer block: each ``tower.blocks[i]`` is replaced by
   ``checkpoint_wrapper(block)`` (non-reentrant ``torch.utils.checkpoint``). The wrapper is an
   ordinary module, so the FSDP unit of step 3 contains it and recompute runs on the gathered
   parameters during backward, which is the composition torch 2.x documents for FSDP2;
3. optional ``torch.compile`` of each block (``module.compile()``, in place, keeps the FQNs);
4. ``fully_shard`` per block, then per tower (the stem, embeddings, norms, pooling head and
   projection that are not inside a block), then the root (``logit_scale``/``logit_bias``),
   each with ``MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)``; the root keeps its
   parameters gathered after forward (the backward needs them at once anyway);
5. ``to_empty`` on the real device, then the model's own initialisation, run by every rank on
   its own shards (seed all ranks alike; whether shards then equal a one-process init depends on
   the DTensor RNG support of the device, so checkpoints, not seeds, carry exact weights).

``ddp`` replaces step 4 by ``replicate`` (``torch.distributed._composable.replicate_with_fsdp``:
FSDP2's machinery with a replicated placement, so mixed precision, gradient-sync control and
``clip_grad_norm_`` on DTensors work exactly as for ``fsdp``).

``encode_image``, ``encode_text`` and ``logit_params`` (added here) are registered as FSDP forward
methods, so evaluation and the loss can call them on the root and still trigger the all-gathers.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORWARD_METHODS = ("encode_image", "encode_text", "logit_params")


@dataclass(frozen=True)
class ParallelPlan:
    """How to wrap: the choices of the ``TrainConfig`` that matter here."""

    sharding: str = "fsdp"  # "fsdp" | "ddp"
    precision: str = "fp32"
    reshard_after_forward: bool = True
    checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile backend; "eager"/"aot_eager" for tests


def towers(model: nn.Module) -> list[nn.Module]:
    """The image and text towers (``model.visual``, ``model.text``)."""
    return [model.visual, model.text]


def blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Every transformer block, image tower first."""
    for tower in towers(model):
        yield from tower.blocks


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """Parameters and compute in ``precision``; gradient reduction always in fp32."""
    dtype = DTYPES[precision]
    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Step 2: wrap each block in place (``tower.blocks[i] = checkpoint_wrapper(block)``)."""
    for tower in towers(model):
        for i, block in enumerate(tower.blocks):
            tower.blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module, backend: str = "inductor") -> None:
    """Step 3: compile each block in place (``nn.Module.compile`` keeps parameter names).

    ``backend`` is torch.compile's: ``inductor`` generates kernels (the point of ``--compile``;
    on CPU it builds C++ for ~25 s); ``aot_eager`` / ``eager`` run the captured graphs with eager
    kernels, so the wiring (what is compiled, graph capture through FSDP's hooks, autograd)
    is exercised in seconds (``tests/trainer/test_compile.py``)."""
    for block in blocks(model):
        block.compile(backend=backend)


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, plan: ParallelPlan) -> None:
    """Step 4: ``fully_shard`` blocks, then towers, then the root (bottom-up, as FSDP2 needs)."""
    mp = mixed_precision(plan.precision)
    for block in blocks(model):
        fully_shard(
            block, mesh=mesh, mp_policy=mp, reshard_after_forward=plan.reshard_after_forward
        )
    for tower in towers(model):
        fully_shard(
            tower, mesh=mesh, mp_policy=mp, reshard_after_forward=plan.reshard_after_forward
        )
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def apply_ddp(model: nn.Module, mesh: DeviceMesh, plan: ParallelPlan) -> None:
    """Step 4 for ``ddp``: replicate blocks, towers and root with the same units as FSDP, so that
    gradient all-reduces overlap backward block by block."""
    from torch.distributed._composable.replicate_with_fsdp import replicate

    mp = mixed_precision(plan.precision)
    for module in [*blocks(model), *towers(model), model]:
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
    plan: ParallelPlan,
    device: torch.device,
    init_fn: Callable[[nn.Module], None],
) -> nn.Module:
    """Apply steps 2-5 to a meta-device ``model``; returns the same (now FSDP) module, or for one
    fp32 rank the plain module (``needs_wrapping``)."""
    if plan.checkpointing:
        apply_activation_checkpointing(model)
    if plan.compile:
        apply_compile(model, plan.compile_backend)
    attach_logit_params(model)
    if plan.sharding not in ("fsdp", "ddp"):
        raise ValueError(f"unknown sharding {plan.sharding!r}")
    if needs_wrapping(mesh, plan):
        if plan.sharding == "fsdp":
            apply_fsdp(model, mesh, plan)
        else:
            apply_ddp(model, mesh, plan)
        register_forward_methods(model)
    materialize(model, device, init_fn)
    return model


def needs_wrapping(mesh: DeviceMesh, plan: ParallelPlan) -> bool:
    """False for one rank in fp32: step 4 is skipped and the model stays a plain module.

    With one rank there is nothing to shard, gather or reduce, and in fp32 FSDP's mixed
    precision casts nothing, so the wrapped model computes exactly what the plain one does
    (same init at a fixed seed, same losses bit for bit: ``tests/trainer/test_parallelize.py``)
    but pays for it: copies into and out of the all-gather and reduce-scatter buffers of every
    unit, hooks, and DTensor dispatch of every op in gradient clipping and the optimizer
    (``benchmarks/train_overhead.py``, ViT-B-32 batch 16 on 2 CPU threads: 1.34x a bare loop's
    step wrapped, 1.02x unwrapped; mostly backward, where the gradients are copied into and out of
    the reduce-scatter buffers and the parameters gathered again).
    Everything downstream works on plain parameters as well (``full_value``, checkpoints through
    DCP's state-dict API, ``logit_params``); bf16 / fp16 keep FSDP for its precision policy.
    """
    return mesh.size() > 1 or DTYPES[plan.precision] != torch.float32


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Gradient accumulation: skip reduce-scatter / all-reduce on non-final micro-steps."""
    if isinstance(model, FSDPModule) or hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)


def full_value(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a possibly sharded parameter (a collective for DTensors: call it on
    every rank)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
