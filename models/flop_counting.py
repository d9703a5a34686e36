"""Make ``torch.utils.flop_counter.FlopCounterMode`` count attention on CPU.

On a CPU tensor, ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which torch's counter has no formula for
(torch 2.13: the attention core silently counts 0 FLOPs). On the meta device SDPA decomposes
into two ``bmm`` and is counted, and on CUDA the flash / efficient / cuDNN kernels are counted.
``register_cpu_sdpa_flops`` adds the missing formulas, reusing torch's own SDPA formulas:
forward QK^T + AV = 4·B·H·S_q·S_k·hd; backward as torch counts the fused kernels (scores
recomputed, 5 matmuls).
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter

_aten = torch.ops.aten


def register_cpu_sdpa_flops() -> None:
    """Register the CPU flash-attention forward and backward with FlopCounterMode (idempotent)."""
    fwd = _aten._scaled_dot_product_flash_attention_for_cpu
    bwd = _aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    if bwd not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(bwd)
        def _cpu_sdpa_backward(
            grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
        ):
            return flop_counter.sdpa_backward_flop_count(
                grad_out_shape, query_shape, key_shape, value_shape
            )


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn(*args, **kwargs)`` under FlopCounterMode (CPU attention included):
    returns (total FLOPs, fn's result)."""
    register_cpu_sdpa_flops()
    counter = flop_counter.FlopCounterMode(display=False)
    with counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result
