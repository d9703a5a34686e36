"""LAMB: layer-wise adaptive moments (You et al. 2020, "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", Algorithm 2), as used by EVA-CLIP.

Per parameter ``w`` with gradient ``g`` at step ``t`` (elementwise unless noted)::

    m = b1 m + (1 - b1) g                    v = b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t)                   v_hat = v / (1 - b2^t)      (bias_correction)
    u = m_hat / (sqrt(v_hat) + eps) + wd w   (decoupled weight decay inside the update)
    r = ||w|| / ||u||   (2-norms over the WHOLE parameter; r = 1 if either norm is 0)
    w = w - lr r u

Sharded parameters (FSDP2 ``DTensor``): each rank holds a shard, so ``||w||`` and ``||u||`` are
global norms. Every rank computes the squared norms of its local shards for all its parameters,
packs them into ONE tensor (2 entries per parameter) and issues ONE ``all_reduce(SUM)`` over the
mesh dimension the parameters are sharded on, then takes square roots. Parameters are grouped by
(mesh, sharded mesh dims): plain FSDP2 has a single such group, hence one collective per step
(HSDP reduces over its shard dimension only; replicated dims already hold whole values).

The update is computed on local shards and kept until the norms arrive, so the step holds one
extra shard-sized fp32 buffer per parameter (the moments stay DTensors, so that
``torch.distributed.checkpoint`` saves them sharded). Gradient clipping, if wanted, is done by
the trainer before ``step`` (NVIDIA's FusedLAMB folds a global-norm clip in; we do not).
"""

from __future__ import annotations

import torch

from trainer.optim.shards import local_shard, reduce_key, sum_across_shards
from vlscale.errors import ConfigError


class Lamb(torch.optim.Optimizer):
    """LAMB with per-parameter trust ratio on global (all-rank) norms; see the module docstring.

    ``trust_clip`` optionally caps the trust ratio (None: uncapped, as in the paper with
    phi = identity). A param group with ``trust_ratio=False`` takes plain AdamW-style steps
    (r = 1).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        trust_clip: float | None = None,
    ):
        if not lr > 0:
            raise ConfigError("lr", f"must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError("betas", f"each beta must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ConfigError("eps", f"must be > 0, got {eps}")
        if weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            trust_clip=trust_clip,
            trust_ratio=True,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Pass 1: moments and raw updates on local shards; local squared norms per parameter.
        entries = []  # (group, local param, local update)
        sq_norms: list[torch.Tensor] = []  # 2 scalars per parameter: ||w_local||^2, ||u_local||^2
        keys = []
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                w, g = local_shard(p), local_shard(p.grad)
                m, v = local_shard(state["exp_avg"]), local_shard(state["exp_avg_sq"])
                m.lerp_(g, 1 - b1)  # m = b1 m + (1 - b1) g
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bc1 = 1 - b1**t if group["bias_correction"] else 1.0
                bc2 = 1 - b2**t if group["bias_correction"] else 1.0
                # u = (m / bc1) / (sqrt(v / bc2) + eps) + wd * w, in at least fp32
                work = torch.promote_types(w.dtype, torch.float32)
                denom = (v.to(work) / bc2).sqrt_().add_(group["eps"])
                u = (m.to(work) / bc1).div_(denom)
                if group["weight_decay"] != 0:
                    u.add_(w.to(work), alpha=group["weight_decay"])
                entries.append((group, w, u))
                keys.append(reduce_key(p))
                sq_norms.append(w.to(work).square().sum())
                sq_norms.append(u.square().sum())
        if not entries:
            return loss

        # One tensor of squared norms (P, 2); ONE all-reduce per (mesh, sharded dims) group.
        norm_dtype = torch.float64 if any(n.dtype == torch.float64 for n in sq_norms) else None
        norms = torch.stack([n.to(norm_dtype) if norm_dtype else n for n in sq_norms]).view(-1, 2)
        reduced = sum_across_shards([(k, [norms[i]]) for i, k in enumerate(keys)])
        norms = torch.stack([r[0] for r in reduced]).sqrt()  # (P, 2): ||w||, ||u|| whole param
        w_norm, u_norm = norms[:, 0], norms[:, 1]
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))

        # Pass 2: w -= lr * r * u
        for i, (group, w, u) in enumerate(entries):
            r = ratio[i] if group["trust_ratio"] else ratio.new_ones(())
            if group["trust_clip"] is not None:
                r = r.clamp(max=group["trust_clip"])
            w.sub_((u * (r * group["lr"])).to(w.dtype))
        return loss
