"""Adafactor (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
Cost"), exactly as ``torch.optim.Adafactor`` (torch 2.5+) computes it, for plain tensors AND for
FSDP2-sharded (``DTensor``) parameters, whose factored statistics are those of the GLOBAL tensor.

Per parameter ``w`` (global shape ``(..., R, C)`` when factored) with gradient ``g`` at step
``t`` (torch's variant: ``lr`` caps the relative step and scales weight decay; ``eps1`` is
applied to the estimate, not added to ``g^2``)::

    beta2_hat = 1 - t^beta2_decay              rho = min(lr, 1 / sqrt(t))
    alpha = max(eps2, RMS(w)) * rho            (RMS over the whole tensor, before decay)
    w = w * (1 - lr * weight_decay)
    ndim >= 2: factor over the last two dims, one (R, C) matrix per leading index:
        r = beta2_hat r + (1 - beta2_hat) mean_over_C(g^2)      shape (..., R, 1)
        c = beta2_hat c + (1 - beta2_hat) mean_over_R(g^2)      shape (..., 1, C)
        v = (r @ c) / max(mean_over_R(r), eps1)
    ndim < 2:  v = beta2_hat v + (1 - beta2_hat) g^2          (full, elementwise)
    u = g / sqrt(max(v, eps1^2))
    w = w - alpha / max(1, RMS(u) / d) * u     (RMS over the whole tensor: update clipping)

``eps1 = None`` means ``finfo(w.dtype).eps`` (torch takes the dtype of a group's first
parameter; we take each parameter's own, which only differs for groups of mixed dtypes).

Sharding (FSDP2 ``fully_shard`` shards dim 0; HSDP adds replicated mesh dims). A rank holds some
rows of dim 0 and sees only its own part of ``g``. What then needs other ranks' rows:

* ``RMS(w)`` and ``RMS(u)``: global sums of squares, for every sharded parameter.
* 2-D parameters (dim 0 IS the row dim ``R``): ``r`` is per row, hence local; but
  ``mean_over_R(g^2)`` (the column statistic) and ``mean_over_R(r)`` (the normaliser) sum over
  rows held by every rank. Each rank adds up its rows, the sums are all-reduced and divided by
  the global ``R``. A rank with zero rows (dim 0 smaller than the world) contributes zeros.
* Parameters with 3+ dims (e.g. the conv stem ``(d, 3, p, p)``): dim 0 is a *leading* index, so
  each (R, C) = (p, p) matrix lives whole on one rank and ``r``, ``c`` and the normaliser are
  local; only the two RMS values are global.

Communication per step, per (mesh, sharded mesh dims) of the parameters (plain FSDP2: one)::

    all-reduce 1: ||w_local||^2 of every sharded parameter, and ||u_local||^2 of those whose
                  update is already final (vectors, 3+ dims), and for each 2-D parameter its
                  C column sums of g^2 plus the sum of r        -> one flat buffer
    all-reduce 2: ||u_local||^2 of the 2-D parameters           -> one flat buffer (1 per param)

Two are the minimum for the exact algorithm: ``u`` of a row-sharded matrix needs the global
column statistic, and ``RMS(u)`` then needs every rank's ``u``. The payload is sublinear: one
float per column of each matrix plus a few per parameter, i.e. 0.43 MiB in fp32 for ViT-B-32
(151 M parameters) and 6.3 MiB for EVA02-E-14-plus (5.0 B), about 0.07% and 0.03% of the
parameter bytes. Without row-sharded 2-D parameters only the first all-reduce is issued.

State (``torch.distributed.checkpoint`` saves it as is): ``variance`` and the row factor
``row_var`` are sharded like the parameter (DTensors with its placements, so DCP writes each
rank's rows); the column factor ``col_var`` of a 2-D parameter is identical on every rank
after the all-reduce and is a ``Replicate`` DTensor; for 3+ dims it is sharded on dim 0 like the
parameter. ``step`` is a plain scalar tensor, as in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard

from trainer.optim.shards import local_shard, reduce_key, sum_across_shards
from vlscale.errors import ConfigError


def _step_dtype() -> torch.dtype:
    """torch's optimizers keep ``step`` in float64 only when that is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_placements(p: torch.Tensor) -> None:
    """Only dim-0 sharding (FSDP2 / HSDP) keeps the row/column split above valid."""
    if not isinstance(p, DTensor):
        return
    for pl in p.placements:
        if (isinstance(pl, Shard) and pl.dim == 0) or isinstance(pl, Replicate):
            continue
        raise ConfigError(
            "optimizer",
            f"adafactor supports DTensor parameters sharded on dim 0 (FSDP2 / HSDP); got "
            f"placements {p.placements} for a parameter of shape {tuple(p.shape)}. Use adamw "
            "or lamb with tensor parallelism",
        )


def _like(p: torch.Tensor, local: torch.Tensor, shape, placements) -> torch.Tensor:
    """``local`` as a state tensor of ``p``: a DTensor on p's mesh when p is one."""
    if not isinstance(p, DTensor):
        return local
    shape = torch.Size(shape)
    stride = torch.empty(shape, device="meta").stride()  # contiguous global strides
    return DTensor.from_local(
        local, p.device_mesh, placements, run_check=False, shape=shape, stride=stride
    )


def _col_placements(p: DTensor):
    """Replicated over the mesh dims that split a 2-D parameter's rows; else as ``p``."""
    if p.ndim == 2:
        return [Replicate() if isinstance(pl, Shard) else pl for pl in p.placements]
    return list(p.placements)


@dataclass
class _Work:
    """One parameter's step in flight: local tensors, scalars, and what awaits reduction."""

    w: torch.Tensor  # local param shard (written in place)
    g: torch.Tensor  # local grad shard, sign-flipped when maximizing
    state: dict
    key: object  # (mesh, sharded mesh dims) or None when local == global
    numel: int  # global element count
    rho: float
    eps1: float
    eps2: float  # floors RMS(w) in alpha
    one_minus_beta2: float  # 1 - beta2_hat = t^beta2_decay, the lerp weight
    d: float
    split_rows: bool  # 2-D and row-sharded: column stats need the other ranks
    global_rows: int
    sums: list[torch.Tensor] = field(default_factory=list)  # round-1 payload
    update: torch.Tensor | None = None
    usq: torch.Tensor | None = None


class Adafactor(torch.optim.Optimizer):
    """torch.optim.Adafactor's algorithm, defaults and state names, DTensor-aware (see above)."""

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        maximize: bool = False,
    ):
        if not float(lr) >= 0:  # lr = 0 is legal: DCP's state init steps with it
            raise ConfigError("lr", f"must be >= 0, got {lr}")
        if not beta2_decay <= 0:
            raise ConfigError("beta2_decay", f"must be <= 0 (e.g. -0.8), got {beta2_decay}")
        if eps[0] is not None and not eps[0] >= 0:
            raise ConfigError("eps", f"eps1 must be >= 0 or None, got {eps[0]}")
        if not eps[1] >= 0:
            raise ConfigError("eps", f"eps2 must be >= 0 (e.g. 1e-3), got {eps[1]}")
        if not d >= 1:
            raise ConfigError("d", f"clipping threshold must be >= 1, got {d}")
        if not weight_decay >= 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=tuple(eps),
            d=d,
            weight_decay=weight_decay,
            maximize=maximize,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                _check_placements(p)

    def _init_state(self, p: torch.Tensor, state: dict) -> None:
        """Zero statistics with torch's names and shapes; DTensors where ``p`` is one."""
        state["step"] = torch.tensor(0.0, dtype=_step_dtype())
        g = local_shard(p.grad)
        if p.ndim < 2:
            state["variance"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            return
        row_shape, col_shape = list(p.shape), list(p.shape)
        row_shape[-1], col_shape[-2] = 1, 1
        local_row, local_col = list(g.shape), list(g.shape)
        local_row[-1], local_col[-2] = 1, 1
        placements = list(p.placements) if isinstance(p, DTensor) else None
        state["row_var"] = _like(p, g.new_zeros(local_row), row_shape, placements)
        col_pl = _col_placements(p) if isinstance(p, DTensor) else None
        state["col_var"] = _like(p, g.new_zeros(local_col), col_shape, col_pl)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        works = [
            self._begin(p, group)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not works:
            return loss

        # Round 1: param norms, final-update norms, 2-D column sums and row-factor sums.
        reduced = sum_across_shards([(wk.key, wk.sums) for wk in works])
        psq = []
        for wk, sums in zip(works, reduced, strict=True):
            psq.append(sums[0])
            if wk.split_rows:
                wk.update = self._finish_split(wk, col_sum=sums[1], row_sum=sums[2])
                wk.usq = _sq(wk.update)
            else:
                wk.usq = sums[1]

        # Round 2: update norms of row-sharded 2-D parameters (no-op when there are none).
        late = [i for i, wk in enumerate(works) if wk.split_rows]
        late_sums = sum_across_shards([(works[i].key, [works[i].usq]) for i in late])
        for i, sums in zip(late, late_sums, strict=True):
            works[i].usq = sums[0]

        # One host sync for all scalars, then w -= alpha / max(1, RMS(u) / d) * u.
        psq_f = torch.stack([t.to(torch.float64) for t in psq]).tolist()
        usq_f = torch.stack([wk.usq.to(torch.float64) for wk in works]).tolist()
        for wk, pn, un in zip(works, psq_f, usq_f, strict=True):
            root_n = wk.numel**0.5
            alpha = max(wk.eps2, pn**0.5 / root_n) * wk.rho
            denom = max(1.0, un**0.5 / (root_n * wk.d))
            wk.w.add_(wk.update, alpha=-alpha / denom)
        return loss

    def _begin(self, p: torch.Tensor, group: dict) -> _Work:
        """Local part of the step: counters, weight decay, local statistics, the update if final."""
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        if p.grad.is_sparse:
            raise RuntimeError("Adafactor does not support sparse gradients")
        state = self.state[p]
        if not state:
            self._init_state(p, state)
        state["step"] += 1
        t = state["step"].item()
        lr = float(group["lr"])
        eps1, eps2 = group["eps"]
        w, g = local_shard(p), local_shard(p.grad)
        if group["maximize"]:
            g = -g
        key = reduce_key(p)
        wk = _Work(
            w=w,
            g=g,
            state=state,
            key=key,
            numel=p.numel(),
            rho=min(lr, 1 / t**0.5),
            eps1=torch.finfo(w.dtype).eps if eps1 is None else eps1,
            eps2=eps2,
            one_minus_beta2=t ** group["beta2_decay"],
            d=group["d"],
            split_rows=key is not None and p.ndim == 2,
            global_rows=p.shape[-2] if p.ndim >= 2 else 0,
        )
        wk.sums.append(_sq(w))  # ||w_local||^2, BEFORE the decay below (as torch)
        if group["weight_decay"] != 0:
            w.mul_(1 - lr * group["weight_decay"])

        if p.ndim < 2:
            variance = local_shard(state["variance"])
            variance.lerp_(g * g, wk.one_minus_beta2)
            wk.update = _apply_estimate(variance.clone(), g, wk.eps1)
            wk.sums.append(_sq(wk.update))
            return wk

        row_var, col_var = local_shard(state["row_var"]), local_shard(state["col_var"])
        # mean over C of g^2 per row: (..., R_local, 1); norm^2 avoids a g-sized temporary
        row_var.lerp_(
            torch.norm(g, dim=-1, keepdim=True).square_().div_(g.size(-1)), wk.one_minus_beta2
        )
        if wk.split_rows:
            # this rank's rows only: sum of g^2 per column (1, C) and sum of r (1, 1)
            wk.sums.append(torch.norm(g, dim=-2, keepdim=True).square_())
            wk.sums.append(row_var.sum(dim=-2, keepdim=True))
            return wk
        # whole (R, C) matrices are local: finish here exactly as torch does
        col_var.lerp_(
            torch.norm(g, dim=-2, keepdim=True).square_().div_(g.size(-2)), wk.one_minus_beta2
        )
        var = row_var @ col_var  # (..., R, 1) @ (..., 1, C) -> (..., R, C)
        var.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=wk.eps1))
        wk.update = _apply_estimate(var, g, wk.eps1)
        wk.sums.append(_sq(wk.update))
        return wk

    @staticmethod
    def _finish_split(wk: _Work, col_sum: torch.Tensor, row_sum: torch.Tensor) -> torch.Tensor:
        """Update of a row-sharded 2-D parameter once the column sums of all ranks are in."""
        row_var, col_var = local_shard(wk.state["row_var"]), local_shard(wk.state["col_var"])
        R = wk.global_rows
        col_var.lerp_(col_sum.to(col_var.dtype).div_(R), wk.one_minus_beta2)  # (1, C), global
        norm = (row_sum.to(row_var.dtype) / R).clamp_(min=wk.eps1)  # (1, 1): mean_R(r), global
        var = (row_var @ col_var).div_(norm)  # (R_local, 1) @ (1, C) -> (R_local, C)
        return _apply_estimate(var, wk.g, wk.eps1)


def _apply_estimate(var: torch.Tensor, g: torch.Tensor, eps1: float) -> torch.Tensor:
    """u = g / sqrt(max(v, eps1^2)), in place in ``var`` (eps1 squared keeps its magnitude)."""
    return var.clamp_(min=eps1 * eps1).rsqrt_().mul_(g)


def _sq(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares as a 0-d tensor, accumulated in at least fp32."""
    return t.to(torch.promote_types(t.dtype, torch.float32)).square().sum()
