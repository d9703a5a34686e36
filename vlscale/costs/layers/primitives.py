"""What every layer is described in: parameter shapes, ops and saved tensors.

An :class:`Op` is one kind of kernel launched ``kernels`` times; its ``flops`` follow
``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add, matmuls / convolutions /
attention only) and its ``bytes`` are what the kernel reads plus writes. An :class:`OpList`
appends ops in execution order with helpers for the recurring patterns (a activation bytes per
element, m rows):

    linear Y[m, n] = X[m, k]·W[n, k]ᵀ       forward   2·m·n·k FLOPs, (m·k + n·k + m·n)·a bytes
                                            backward  dX = dY·W and dW = dYᵀ·X, 2·m·n·k each
                                                      (no dX for a layer whose input is data),
                                                      bias gradient Σ over m: (m·n + n)·a
    attention (g = batch·heads, Sq, Sk, hd) forward   4·g·Sq·Sk·hd (QKᵀ and AV), q, k, v read +
                                                      o written 4·g·Sq·hd·a; backward one fused
                                                      kernel, twice the FLOPs, 8·g·Sq·hd·a
    elementwise                             reads + writes ``elements``·a, no FLOPs

A causal attention kernel executes (S + 1) / (2S) of the full count (``exec_flops``); the model
FLOPs (the MFU numerator) count it in full, as FlopCounterMode does.

:class:`Saved` counts the elements a layer keeps for backward by storage type: activations (in
the compute precision), fp32 statistics (``STAT_BYTES``) and int64 indices (``INDEX_BYTES``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from vlscale.costs.dtypes import INDEX_BYTES, STAT_BYTES
from vlscale.specs.towers import TrunkSpec

Shape = tuple[int, ...]
OpKind = Literal["matmul", "attention", "elementwise"]
Phase = Literal["forward", "backward", "recompute"]


@dataclass(frozen=True)
class Op:
    """``kernels`` launches of one kernel; flops / bytes are totals over those launches.

    ``shape`` = (batch, m, n, k) of one launch for matmuls (C[m, n] = A[m, k]·B[k, n], ``batch``
    independent products) and attention (batch·heads, query length, key length, head dim).
    ``exec_flops`` is what the kernel really executes (a causal attention kernel skips the
    masked half); ``flops`` is the model-FLOPs count (FlopCounterMode's, the MFU numerator).
    """

    name: str
    kind: OpKind
    phase: Phase
    flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 1
    shape: tuple[int, int, int, int] | None = None
    exec_flops: float | None = None
    dtype: str = "fp32"
    # how the host launches it: "model" (inside the towers: module call, autograd, hooks),
    # "dtensor" (an op on DTensor parameters), "plain" (a bare tensor op, e.g. LAMB's loop)
    dispatch: Literal["model", "dtensor", "plain"] = "model"

    @property
    def executed_flops(self) -> float:
        return self.flops if self.exec_flops is None else self.exec_flops


@dataclass
class OpList:
    """Ops appended in execution order, in one compute dtype of ``act_bytes`` per element."""

    dtype: str
    act_bytes: int
    ops: list[Op] = field(default_factory=list)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def matmul(self, name: str, shape: tuple[int, int, int, int], phase: Phase) -> None:
        """C[m, n] = A[m, k]·B[k, n] for ``shape`` = (1, m, n, k): 2·m·n·k FLOPs."""
        _, m, n, k = shape
        bytes_ = (m * k + n * k + m * n) * self.act_bytes
        self.add(Op(name, "matmul", phase, 2.0 * m * n * k, bytes_, 1, shape, dtype=self.dtype))

    def linear(self, name: str, m: int, n: int, k: int, bias: bool, phase: Phase) -> None:
        """Y[m, n] = X[m, k]·W[n, k]ᵀ (+ bias, fused): one matmul forward."""
        self.matmul(name, (1, m, n, k), phase)

    def linear_backward(self, name: str, m: int, n: int, k: int, bias: bool, dx: bool) -> None:
        """dX[m, k] = dY[m, n]·W (skipped when the input is data) and dW[n, k] = dYᵀ·X, each
        reading dY and one operand and writing one; bias: Σ over m."""
        if dx:
            self.matmul(f"{name}.dx", (1, m, k, n), "backward")
        self.matmul(f"{name}.dw", (1, n, k, m), "backward")
        if bias:
            self.elementwise(f"{name}.db", m * n + n, "backward")

    def elementwise(self, name: str, elements: float, phase: Phase, kernels: int = 1) -> None:
        """A memory-bound kernel touching ``elements`` activation elements (reads + writes)."""
        bytes_ = elements * self.act_bytes
        self.add(Op(name, "elementwise", phase, 0.0, bytes_, kernels, dtype=self.dtype))

    def attention(
        self, name: str, batch_heads: int, sq: int, sk: int, hd: int, causal: bool, phase: Phase
    ) -> None:
        """SDPA: QKᵀ and AV, 4·g·Sq·Sk·hd FLOPs forward, 8·g·Sq·Sk·hd backward (one kernel)."""
        backward = phase == "backward"
        flops = (2.0 if backward else 1.0) * 4.0 * batch_heads * sq * sk * hd
        # a causal kernel skips the blocks above the diagonal: (S + 1) / (2S) of the work
        executed = flops * (sk + 1) / (2 * sk) if causal else flops
        io = (8 if backward else 4) * batch_heads * sq * hd * self.act_bytes
        shape = (batch_heads, sq, sk, hd)
        self.add(Op(name, "attention", phase, flops, io, 1, shape, executed, self.dtype))


@dataclass(frozen=True)
class Saved:
    """Saved elements split by storage type: activations (``precision``), fp32, int64."""

    act: int = 0
    fp32: int = 0
    index: int = 0

    def __add__(self, other: Saved) -> Saved:
        return Saved(self.act + other.act, self.fp32 + other.fp32, self.index + other.index)

    def __sub__(self, other: Saved) -> Saved:
        return Saved(self.act - other.act, self.fp32 - other.fp32, self.index - other.index)

    def __mul__(self, k: int) -> Saved:
        return Saved(self.act * k, self.fp32 * k, self.index * k)

    def nbytes(self, act_bytes: int) -> int:
        return self.act * act_bytes + self.fp32 * STAT_BYTES + self.index * INDEX_BYTES


def norm_shapes(n: int, t: TrunkSpec) -> list[Shape]:
    """LayerNorm has a weight and a bias; RMSNorm a weight only."""
    return [(n,), (n,)] if t.norm_kind == "layernorm" else [(n,)]


def norm_saved(rows: int, width: int, t: TrunkSpec) -> Saved:
    """What a norm saves besides its input and output: LayerNorm mean + rstd (2 per row);
    RMSNorm (composite on the reference path) rstd per row and the normalised x·rstd
    (``width`` per row)."""
    if t.norm_kind == "layernorm":
        return Saved(fp32=2 * rows)
    return Saved(act=rows * width, fp32=rows)
