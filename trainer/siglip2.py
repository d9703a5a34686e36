"""SigLIP 2 in the training step: phases, the step's random draws, local views, the teacher.

- **Phase** of 1-based step s of T: the phase p of ``Siglip2Spec.phases()`` with
  start_p·T <= s − 1 < end_p·T (``phase_at``).
- **Draws** (``draw_inputs``): one ``torch.Generator`` per micro-step, seeded from (seed, step,
  micro-step) and drawn on the CPU for the whole micro-batch of the world (b·W rows); each rank
  takes its own rows. So an example's draws depend on its place in the global batch only: the
  same at any world size, and after a resume (nothing to checkpoint). Per example: for each
  decoder pass, parallel with probability ``parallel_fraction``; ``local_views`` crop boxes
  (area 5-40 % of the image, SILC; aspect in [3/4, 4/3], log-uniform, as torchvision's
  ``RandomResizedCrop``); K_m = N − ``kept_patches(mask_ratio)`` masked patches (the first K_m
  of a random permutation: exactly K_m per example).
- **Local views** (``local_views``): each box cropped in whole pixels and resized to l × l
  (``F.interpolate``, bilinear), example-major (b·n_loc, 3, l, l).
- **Teacher** (``Siglip2Run``): created when a step of a distilling phase begins and there is
  none: built on meta, sharded like the student (``fully_shard`` per block, the tower, the root,
  on the student's mesh and precision; forward only), materialised and copied from the student
  shard by shard (no random draw: a resumed run's RNG stream stays the straight run's). After
  every applied optimizer step of such a phase θ_t <- m·θ_t + (1 − m)·θ_s, shard by shard,
  in fp32 (``ema_update``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.siglip2 import Siglip2Inputs, build_teacher
from trainer.data.stream import derived_seed
from trainer.losses.siglip2 import make_caption_loss, siglip2_loss
from vlscale.specs.siglip2 import DistillSpec, Phase, Siglip2Spec, local_image_size

CROP_AREA = (0.05, 0.4)  # SILC's local crops, share of the image's area
CROP_ASPECT = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect range
DRAW_SALT = 7_000_000  # keeps the draws' seeds apart from the data's and the ranks' streams


def phase_at(phases: tuple[Phase, ...], step: int, steps: int) -> Phase:
    """The phase of 1-based ``step`` of ``steps``: start·T <= step − 1 < end·T."""
    for phase in phases:
        if phase.start_fraction * steps <= step - 1 < phase.end_fraction * steps:
            return phase
    return phases[-1]


def draw_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The CPU generator of one micro-step's draws (module doc)."""
    return torch.Generator().manual_seed(derived_seed(seed, DRAW_SALT + 64 * step + micro))


@dataclass
class Draws:
    """One rank's rows of a micro-step's draws: ``passes`` (b,) bool per decoder pass,
    ``boxes`` (b, n_loc, 4) float (area share, log aspect, x and y in [0, 1)),
    ``mask_ids`` (b, K_m) long."""

    passes: list[torch.Tensor] | None
    boxes: torch.Tensor | None
    mask_ids: torch.Tensor | None


def draw_inputs(
    s2: Siglip2Spec, phase: Phase, vision, gen: torch.Generator, rank: int, b: int, world: int
) -> Draws:
    """This rank's rows ``rank·b : (rank + 1)·b`` of draws made for all b·W rows."""
    rows, mine = b * world, slice(rank * b, (rank + 1) * b)
    passes = boxes = mask_ids = None
    if phase.decoder:
        d = s2.decoder
        par = torch.rand(d.passes, rows, generator=gen) < d.parallel_fraction  # (P, b·W)
        passes = list(par[:, mine].unbind(0))
    if phase.distill:
        u = torch.rand(rows, s2.distill.local_views, 4, generator=gen)  # (b·W, n_loc, 4)
        lo, hi = CROP_AREA
        a_lo, a_hi = (math.log(x) for x in CROP_ASPECT)
        u[..., 0] = lo + (hi - lo) * u[..., 0]
        u[..., 1] = a_lo + (a_hi - a_lo) * u[..., 1]
        boxes = u[mine]
    if phase.masked:
        n = vision.num_patches
        k = n - vision.kept_patches(s2.masked.mask_ratio)
        noise = torch.rand(rows, n, generator=gen)  # (b·W, N)
        mask_ids = noise.argsort(dim=1)[:, :k][mine]  # (b, K_m)
    return Draws(passes, boxes, mask_ids)


def crop_box(box: list[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(area share, log aspect, x, y) -> (top, left, h, w) in whole pixels inside the image."""
    area, log_aspect, x, y = box
    aspect = math.exp(log_aspect)
    w = min(width, max(1, round(math.sqrt(area * aspect) * width)))
    h = min(height, max(1, round(math.sqrt(area / aspect) * height)))
    return int(y * (height - h + 1)), int(x * (width - w + 1)), h, w


def local_views(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(b, 3, H, W) images, (b, n_loc, 4) boxes -> (b·n_loc, 3, size, size), example-major."""
    _, _, height, width = images.shape
    views = []
    for i, per_image in enumerate(boxes.tolist()):  # boxes live on the CPU: no device sync
        for box in per_image:
            top, left, h, w = crop_box(box, height, width)
            crop = images[i : i + 1, :, top : top + h, left : left + w]  # (1, 3, h, w)
            views.append(F.interpolate(crop, size=(size, size), mode="bilinear"))
    return torch.cat(views)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A parameter's local shard (DTensor) or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def student_params(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's parameters by name without the activation-checkpoint wrapper's part
    (``blocks.0._checkpoint_wrapped_module.norm1`` -> ``blocks.0.norm1``): the teacher's names."""
    wrapper = "_checkpoint_wrapped_module."
    return {n.replace(wrapper, ""): p for n, p in student.named_parameters()}


@torch.no_grad()
def copy_into(teacher: nn.Module, student: nn.Module) -> None:
    """θ_t <- θ_s for every teacher parameter (same names in the student), shard by shard."""
    params = student_params(student)
    for name, p in teacher.named_parameters():
        _local(p).copy_(_local(params[name]))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """θ_t <- m·θ_t + (1 − m)·θ_s (m = ``decay``), shard by shard."""
    params = student_params(student)
    for name, p in teacher.named_parameters():
        _local(p).lerp_(_local(params[name]).to(p.dtype), 1.0 - decay)


class Siglip2Run:
    """SigLIP 2's per-run state in the loop: phases, the teacher and the pad id."""

    def __init__(self, cfg, model_spec, s2: Siglip2Spec, pad_id: int, rank: int, world: int):
        self.cfg, self.spec, self.s2 = cfg, model_spec, s2
        self.phases = s2.phases()
        self.pad_id, self.rank, self.world = pad_id, rank, world
        self.impl = cfg.recipe_spec().loss_impl
        self.local_size = local_image_size(s2, model_spec.vision) if s2.distill else None
        self.teacher: nn.Module | None = None
        self.shard: Callable[[nn.Module], None] | None = None  # set by trainer.train

    def phase(self, step: int) -> Phase:
        return phase_at(self.phases, step, self.cfg.steps)

    def distilling(self, step: int) -> bool:
        phase = self.phase(step)
        return phase.distill or phase.masked

    def make_teacher(self) -> nn.Module:
        """The teacher's modules, sharded like the student, with storage (not yet set)."""
        teacher = build_teacher(self.spec, self.s2, device="meta")
        if self.shard is not None:
            self.shard(teacher)
        self.teacher = teacher
        return teacher

    def begin_step(self, model: nn.Module, step: int) -> None:
        """The first step of a distilling phase creates the teacher (a copy of the student)."""
        if self.teacher is None and self.distilling(step):
            copy_into(self.make_teacher(), model)

    def end_step(self, model: nn.Module, step: int, applied: bool) -> None:
        """EMA after an applied optimizer step of a distilling phase."""
        if applied and self.teacher is not None and self.distilling(step):
            ema_update(self.teacher, model, (self.s2.distill or DistillSpec()).ema_decay)

    def loss(self, model, images, tokens, step, micro, group, timer) -> torch.Tensor:
        """One micro-step's forward and total loss (``trainer.losses.siglip2``)."""
        phase = self.phase(step)
        gen = draw_generator(self.cfg.seed, step, micro)
        b = images.shape[0]
        draws = draw_inputs(self.s2, phase, self.spec.vision, gen, self.rank, b, self.world)
        extra = build_inputs(self.s2, draws, images, tokens, self.pad_id, self.local_size)
        teacher_out = None
        if self.teacher is not None and (phase.distill or phase.masked):
            teacher_out = self.teacher(images, extra.mask_ids)
        out = model(images, tokens, extra=extra)
        timer.lap("forward")
        scale, bias = model.logit_params()  # (1,), (1,): gathered, differentiable
        total, _ = siglip2_loss(out, teacher_out, self.s2, scale, bias, group, self.impl)
        timer.lap("loss")
        return total


def build_inputs(
    s2: Siglip2Spec,
    draws: Draws,
    images: torch.Tensor,
    tokens: torch.Tensor,
    pad_id: int,
    local_size: int | None,
) -> Siglip2Inputs:
    """The student's added inputs of one micro-step from this rank's draws: decoder passes and
    their chunked caption loss, local views, masked positions (on the images' device)."""
    extra = Siglip2Inputs()
    if draws.passes is not None:
        extra.passes = [p.to(images.device) for p in draws.passes]
        rows = tokens.repeat(len(extra.passes), 1)  # (P·b, L): the passes run as one batch
        extra.caption_loss = make_caption_loss(rows, pad_id, s2.decoder.loss_chunk_tokens)
    if draws.boxes is not None:
        extra.local_images = local_views(images, draws.boxes, local_size)
    if draws.mask_ids is not None:
        extra.mask_ids = draws.mask_ids.to(images.device)
    return extra
