"""OpenCLIP checkpoints in and out: ``from_openclip(state_dict, model)`` and ``to_openclip``.

Our ``TwoTower`` and OpenCLIP's model compute the same function for every preset that exists in
OpenCLIP (``vlscale.specs.presets``); only names and layouts differ. The mapping is a list of
``Link``s, one per tensor of our state_dict, each naming the OpenCLIP key(s) it comes from and
how (facts from ``open_clip/transformer.py``, ``open_clip/model.py``, ``timm/models/eva.py``,
``timm/models/vision_transformer.py``, and the key fixtures in
``tests/fixtures/openclip/keys``):

- "copy": same numbers, possibly reshaped: ``logit_scale`` is () in OpenCLIP and (1,) here
  (FSDP2 shards dim 0); ``visual.class_embedding`` (d,) is our ``cls_token`` (1, 1, d); the
  OpenAI-layout ``visual.positional_embedding`` (N+1, d) is our ``pos_embed`` (1, N+1, d).
- "transpose": OpenCLIP's bias-free projections are parameters used as ``x @ proj`` (d, e);
  ours are ``nn.Linear`` weights (e, d).
- "cat": one of our fused weights is OpenCLIP's pieces stacked along dim 0: timm EVA-02's
  separate ``q_proj`` / ``k_proj`` / ``v_proj`` -> our fused qkv; SwiGLU's ``fc1_g`` (gate) and
  ``fc1_x`` (value) halves -> our fused ``fc1`` (gate first, as ``SwiGLU.forward`` chunks it).

No RoPE permutation is needed: ``models.rope`` uses timm's interleaved layout.

Which OpenCLIP layout a spec has (``openclip_layout``):

- vision "openai": OpenCLIP's own ``VisionTransformer`` (keys ``visual.conv1`` ...,
  ``visual.transformer.resblocks.i``); the text tower is then top-level (``CLIP``).
- vision "timm_vit": a timm ViT under ``visual.trunk`` (SigLIP, MAP head ``attn_pool``).
- vision "timm_eva": timm's EVA under ``visual.trunk``; q/k/v are separate Linears when the MLP
  is SwiGLU (``eva02_*_clip``: ``qkv_fused=False``), else fused with ``q_bias`` / ``v_bias``
  (``eva02_enormous``); the projection is the timm head (``visual.trunk.head``, with bias).
- vision "resnet": OpenCLIP's ``ModifiedResNet`` (``visual.conv1..3`` / ``bn1..3`` stem,
  ``visual.layer{s}.{j}`` bottlenecks with ``downsample.0`` / ``.1`` shortcuts, ``visual.attnpool``
  with separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``c_proj``). Our flat ``blocks.i`` are the
  stages' blocks in order; our attention pool's ``kv`` is k_proj and v_proj stacked ("cat").
  Batch-norm running statistics map like weights; ``num_batches_tracked`` (a counter that the
  numbers do not depend on at momentum 0.1) is written by export and optional on import.
- with a timm vision tower the text tower lives under ``text.`` (``CustomTextCLIP``).
- ``logit_bias`` exists in OpenCLIP only for its SigLIP configs (``init_logit_bias``), which
  are exactly its bidirectional text towers; elsewhere ours keeps its initial value.

Import refuses any mismatch, listing the keys: missing, unexpected, or of the wrong shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from models.resnet import block_stage
from models.two_tower import TwoTower, build_model
from vlscale.errors import ConfigError
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import resolve_model
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec

Kind = Literal["copy", "transpose", "cat"]
Shape = tuple[int, ...]
MAX_LISTED = 8  # keys named in an error message before "... and N more"


@dataclass(frozen=True)
class Link:
    """Our tensor ``ours`` <-> OpenCLIP tensor(s) ``theirs`` (shapes ``their_shapes``)."""

    ours: str
    theirs: tuple[str, ...]
    kind: Kind
    their_shapes: tuple[Shape, ...]
    optional: bool = False  # import tolerates its absence (ours keeps its value)


@dataclass(frozen=True)
class Layout:
    vision: Literal["openai", "timm_vit", "timm_eva", "resnet"]
    text_prefix: str  # "" (CLIP) or "text." (CustomTextCLIP)
    logit_bias: bool


# --- which layout ------------------------------------------------------------------------------


def openclip_layout(spec: ModelSpec) -> Layout:
    """OpenCLIP's layout for ``spec``, or a ConfigError saying why it has none."""
    v, t = spec.vision, spec.text
    _check_text(t)
    if v.kind == "resnet":  # OpenCLIP's CLIP class: text tower top-level
        return Layout("resnet", "", logit_bias=not t.causal)
    if v.rope or v.trunk.mlp_kind == "swiglu" or v.trunk.sub_ln or v.trunk.post_norm:
        vision = "timm_eva"
    elif v.pool == "map":
        vision = "timm_vit"
    elif _is_openai_vit(v):
        vision = "openai"
    elif v.patch_bias and v.pool == "cls" and v.proj == "linear_bias":
        vision = "timm_eva"
    else:
        raise ConfigError("model", f"'{spec.name}': its image tower has no OpenCLIP layout")
    if vision == "timm_vit" and v.proj != "none":
        raise ConfigError("model", f"'{spec.name}': a MAP-head tower needs proj='none'")
    if vision == "timm_eva" and (v.pool != "cls" or v.proj != "linear_bias"):
        raise ConfigError("model", f"'{spec.name}': an EVA tower needs cls pooling, linear_bias")
    return Layout(vision, "" if vision == "openai" else "text.", logit_bias=not t.causal)


def _is_openai_vit(v: VisionTowerSpec) -> bool:
    t = v.trunk
    return (
        v.class_token
        and v.learned_pos
        and v.ln_pre
        and not v.patch_bias
        and v.pool == "cls"
        and v.proj == "linear"
        and _plain_trunk(t)
    )


def _plain_trunk(t: TrunkSpec) -> bool:
    """OpenCLIP's ``ResidualAttentionBlock`` / timm's ViT ``Block``."""
    return (
        t.mlp_kind == "gelu"
        and t.norm_kind == "layernorm"
        and t.qkv_bias == "qkv"
        and t.proj_bias
        and t.mlp_bias
        and not t.sub_ln
        and not t.post_norm
    )


def _check_text(t: TextTowerSpec) -> None:
    if not _plain_trunk(t.trunk) or t.proj == "none":
        raise ConfigError("model", "its text tower has no OpenCLIP layout (TextTransformer)")


# --- the links ---------------------------------------------------------------------------------


def openclip_links(spec: ModelSpec) -> list[Link]:
    """Every tensor of our state_dict for ``spec`` with its OpenCLIP source."""
    layout = openclip_layout(spec)
    ours = _our_shapes(spec)
    links: list[Link] = []

    def copy(our: str, their: str, shape: Shape | None = None, optional: bool = False) -> None:
        shape = ours[our] if shape is None else shape
        links.append(Link(our, (their,), "copy", (shape,), optional))

    def transpose(our: str, their: str) -> None:
        links.append(Link(our, (their,), "transpose", (ours[our][::-1],)))

    def cat(our: str, theirs: tuple[str, ...]) -> None:
        rows, *rest = ours[our]
        part = (rows // len(theirs), *rest)
        links.append(Link(our, theirs, "cat", tuple(part for _ in theirs)))

    def linear(our: str, their: str, bias: bool = True) -> None:
        copy(f"{our}.weight", f"{their}.weight")
        if bias:
            copy(f"{our}.bias", f"{their}.bias")

    def norm(our: str, their: str, trunk: TrunkSpec) -> None:
        linear(our, their, bias=trunk.norm_kind == "layernorm")

    copy("logit_scale", "logit_scale", ())
    if layout.logit_bias:
        copy("logit_bias", "logit_bias", ())
    if layout.vision == "resnet":
        _resnet_links(spec.vision, copy, cat, linear)
    else:
        _vision_links(spec, layout, ours, copy, transpose, cat, linear, norm)
    _text_links(spec, layout, ours, copy, transpose, linear, norm)
    return links


def _vision_links(spec, layout, ours, copy, transpose, cat, linear, norm) -> None:
    v, t = spec.vision, spec.vision.trunk
    d = t.width
    if layout.vision == "openai":
        p = "visual."
        copy("visual.patch_embed.weight", p + "conv1.weight")
        copy("visual.cls_token", p + "class_embedding", (d,))
        copy("visual.pos_embed", p + "positional_embedding", ours["visual.pos_embed"][1:])
        norm("visual.ln_pre", p + "ln_pre", t)
        for i in range(t.depth):
            ob, tb = f"visual.blocks.{i}.", f"{p}transformer.resblocks.{i}."
            _openai_block(ob, tb, t, copy, linear, norm)
        norm("visual.norm", p + "ln_post", t)
        transpose("visual.proj.weight", p + "proj")
        return
    p = "visual.trunk."
    linear("visual.patch_embed", p + "patch_embed.proj", bias=v.patch_bias)
    if v.class_token:
        copy("visual.cls_token", p + "cls_token")
    if v.learned_pos:
        copy("visual.pos_embed", p + "pos_embed")
    if v.ln_pre:
        norm("visual.ln_pre", p + "norm_pre", t)
    for i in range(t.depth):
        ob, tb = f"visual.blocks.{i}.", f"{p}blocks.{i}."
        norm(ob + "norm1", tb + "norm1", t)
        norm(ob + "norm2", tb + "norm2", t)
        if layout.vision == "timm_vit":
            linear(ob + "attn.qkv", tb + "attn.qkv")
            linear(ob + "attn.out", tb + "attn.proj")
            linear(ob + "mlp.fc1", tb + "mlp.fc1")
            linear(ob + "mlp.fc2", tb + "mlp.fc2")
        else:
            _eva_block(ob, tb, t, copy, cat, linear, norm)
    norm("visual.norm", p + "norm", t)
    if layout.vision == "timm_vit":
        h = p + "attn_pool."
        copy("visual.head.query", h + "latent")
        for ours_name, theirs in (("q", "q"), ("kv", "kv"), ("out", "proj")):
            linear(f"visual.head.{ours_name}", h + theirs)
        norm("visual.head.norm", h + "norm", t)
        linear("visual.head.mlp.fc1", h + "mlp.fc1")
        linear("visual.head.mlp.fc2", h + "mlp.fc2")
    else:
        linear("visual.proj", p + "head")


def _resnet_links(v, copy, cat, linear) -> None:
    """``models.resnet.ResNetTower`` <-> OpenCLIP's ``ModifiedResNet``."""

    def conv_bn(ours: str, theirs: str, conv: str, bn: str) -> None:
        copy(f"{ours}.{conv}.weight", f"{theirs}.{conv}.weight")
        batch_norm(f"{ours}.{bn}", f"{theirs}.{bn}")

    def batch_norm(ours: str, theirs: str) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            copy(f"{ours}.{name}", f"{theirs}.{name}")
        copy(f"{ours}.num_batches_tracked", f"{theirs}.num_batches_tracked", optional=True)

    for i in (1, 2, 3):
        conv_bn("visual.stem", "visual", f"conv{i}", f"bn{i}")
    for index in range(v.num_blocks):
        stage, j = block_stage(v, index)
        ob, tb = f"visual.blocks.{index}", f"visual.layer{stage + 1}.{j}"
        for i in (1, 2, 3):
            conv_bn(ob, tb, f"conv{i}", f"bn{i}")
        if index == sum(v.layers[:stage]):  # first block of a stage: the shortcut convolves
            copy(f"{ob}.downsample.conv.weight", f"{tb}.downsample.0.weight")
            batch_norm(f"{ob}.downsample.bn", f"{tb}.downsample.1")
    a = "visual.attnpool."
    copy("visual.pool.pos_embed", a + "positional_embedding")
    linear("visual.pool.q", a + "q_proj")
    for name in ("weight", "bias"):
        cat(f"visual.pool.kv.{name}", (f"{a}k_proj.{name}", f"{a}v_proj.{name}"))
    linear("visual.pool.proj", a + "c_proj")


def _eva_block(ob, tb, t, copy, cat, linear, norm) -> None:
    a = tb + "attn."
    if t.mlp_kind == "swiglu":  # timm eva02_*_clip: qkv_fused=False, k_proj has no bias
        cat(ob + "attn.qkv.weight", (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"))
        if t.qkv_bias == "qv":
            copy(ob + "attn.q_bias", a + "q_proj.bias")
            copy(ob + "attn.v_bias", a + "v_proj.bias")
        elif t.qkv_bias == "qkv":
            cat(ob + "attn.qkv.bias", (a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"))
    else:  # fused qkv, separate q / v biases (timm EvaAttention qkv_fused=True)
        linear(ob + "attn.qkv", a + "qkv", bias=t.qkv_bias == "qkv")
        if t.qkv_bias == "qv":
            copy(ob + "attn.q_bias", a + "q_bias")
            copy(ob + "attn.v_bias", a + "v_bias")
    if t.sub_ln:
        norm(ob + "attn.sub_norm", a + "norm", t)
    linear(ob + "attn.out", a + "proj", bias=t.proj_bias)
    m = tb + "mlp."
    if t.mlp_kind == "swiglu" and t.sub_ln:  # timm SwiGLU: separate gate / value Linears
        cat(ob + "mlp.fc1.weight", (m + "fc1_g.weight", m + "fc1_x.weight"))
        if t.mlp_bias:
            cat(ob + "mlp.fc1.bias", (m + "fc1_g.bias", m + "fc1_x.bias"))
        norm(ob + "mlp.sub_norm", m + "norm", t)
    else:  # timm Mlp, or GluMlp (packed fc1, gate first)
        linear(ob + "mlp.fc1", m + "fc1", bias=t.mlp_bias)
    linear(ob + "mlp.fc2", m + "fc2", bias=t.mlp_bias)


def _openai_block(ob, tb, t, copy, linear, norm) -> None:
    norm(ob + "norm1", tb + "ln_1", t)
    copy(ob + "attn.qkv.weight", tb + "attn.in_proj_weight")
    copy(ob + "attn.qkv.bias", tb + "attn.in_proj_bias")
    linear(ob + "attn.out", tb + "attn.out_proj")
    norm(ob + "norm2", tb + "ln_2", t)
    linear(ob + "mlp.fc1", tb + "mlp.c_fc")
    linear(ob + "mlp.fc2", tb + "mlp.c_proj")


def _text_links(spec, layout, ours, copy, transpose, linear, norm) -> None:
    t, p = spec.text.trunk, layout.text_prefix
    copy("text.token_embedding.weight", p + "token_embedding.weight")
    copy("text.pos_embed", p + "positional_embedding")
    for i in range(t.depth):
        _openai_block(f"text.blocks.{i}.", f"{p}transformer.resblocks.{i}.", t, copy, linear, norm)
    norm("text.norm", p + "ln_final", t)
    if spec.text.proj == "linear":
        transpose("text.proj.weight", p + "text_projection")
    else:
        linear("text.proj", p + "text_projection")


def _our_shapes(spec: ModelSpec) -> dict[str, Shape]:
    with torch.device("meta"):
        model = TwoTower(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- conversion --------------------------------------------------------------------------------


def openclip_shapes(spec: ModelSpec) -> dict[str, Shape]:
    """OpenCLIP's state_dict names and shapes for ``spec`` (what ``to_openclip`` writes)."""
    return {
        k: s
        for link in openclip_links(spec)
        for k, s in zip(link.theirs, link.their_shapes, strict=True)
    }


def convert_from_openclip(
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    field: str = "init_from",
    only: str | None = None,
) -> dict[str, torch.Tensor]:
    """OpenCLIP tensors -> our state_dict for ``spec``; every key must be accounted for.

    ``only="visual."``: just the image tower; the file's other keys (``visual.*`` excepted) are
    ignored, so an image tower can come from a model whose text tower differs.
    """
    links = openclip_links(spec)
    if only is not None:
        links = [link for link in links if link.ours.startswith(only)]
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(only)}
    links = [link for link in links if not link.optional or link.theirs[0] in state_dict]
    expected = {k: s for link in links for k, s in zip(link.theirs, link.their_shapes, strict=True)}
    check_keys(state_dict, expected, field, spec.name)
    shapes = _our_shapes(spec)
    out: dict[str, torch.Tensor] = {}
    for link in links:
        parts = [state_dict[k] for k in link.theirs]
        if link.kind == "cat":
            x = torch.cat(parts, dim=0)
        elif link.kind == "transpose":
            x = parts[0].t()
        else:
            x = parts[0]
        out[link.ours] = x.reshape(shapes[link.ours])
    return out


def convert_to_openclip(
    state_dict: Mapping[str, torch.Tensor], spec: ModelSpec
) -> dict[str, torch.Tensor]:
    """Our state_dict for ``spec`` -> OpenCLIP's names, shapes and layouts (contiguous)."""
    out: dict[str, torch.Tensor] = {}
    for link in openclip_links(spec):
        x = state_dict[link.ours]
        if link.kind == "cat":
            for key, part in zip(link.theirs, x.chunk(len(link.theirs), dim=0), strict=True):
                out[key] = part.contiguous()
        elif link.kind == "transpose":
            out[link.theirs[0]] = x.t().contiguous()
        else:
            out[link.theirs[0]] = x.reshape(link.their_shapes[0]).contiguous()
    return out


def check_keys(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, Shape], field: str, name: str
) -> None:
    """ConfigError listing missing, unexpected and wrongly shaped keys, if any."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = [
        f"{label} {len(keys)} key(s): {_listed(keys)}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if keys
    ]
    if problems:
        raise ConfigError(
            field,
            f"the checkpoint is not an OpenCLIP '{name}' state_dict ({'; '.join(problems)}); "
            "pass the --model it was trained with",
        )


def _listed(keys: list[str]) -> str:
    more = len(keys) - MAX_LISTED
    return ", ".join(keys[:MAX_LISTED]) + (f" ... and {more} more" if more > 0 else "")


# --- the Python contract -----------------------------------------------------------------------


def from_openclip(
    state_dict: Mapping[str, torch.Tensor],
    model: str | ModelSpec | TwoTower,
    field: str = "init_from",
) -> TwoTower:
    """A ``TwoTower`` holding OpenCLIP's weights. ``model``: a preset name, a ``ModelSpec``, a
    model file (``vlscale.specs.presets.resolve_model``) or an existing ``TwoTower`` (loaded in
    place). Raises ``ConfigError`` (listing the keys) on any mismatch."""
    target = model if isinstance(model, TwoTower) else build_model(resolve_model(model))
    ours = convert_from_openclip(unwrap_checkpoint(state_dict), target.spec, field)
    missing, unexpected = target.load_state_dict(ours, strict=False)
    # logit_bias is absent from OpenCLIP's non-SigLIP models: it keeps its initial value, as
    # does an optional tensor the file leaves out (batch norm's num_batches_tracked)
    optional = {link.ours for link in openclip_links(target.spec) if link.optional}
    left = [k for k in missing if k != "logit_bias" and k not in optional]
    if left or unexpected:  # the links cover our state_dict; this guards that invariant
        raise ConfigError(field, f"internal mapping gap: missing {left}, unexpected {unexpected}")
    return target


def to_openclip(two_tower: TwoTower) -> dict[str, torch.Tensor]:
    """OpenCLIP's state_dict for ``two_tower`` (loads with ``load_state_dict(strict=True)``)."""
    state = {k: v.detach() for k, v in two_tower.state_dict().items()}
    return convert_to_openclip(state, two_tower.spec)


def unwrap_checkpoint(obj: Mapping) -> Mapping[str, torch.Tensor]:
    """The state_dict inside an OpenCLIP training checkpoint ({"state_dict": ...}, keys maybe
    prefixed "module." by DDP), or ``obj`` itself."""
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


# --- files -------------------------------------------------------------------------------------


def load_state_dict_file(path: str | Path, field: str = "init_from") -> dict[str, torch.Tensor]:
    """Tensors of a ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors``
    file (needs the ``safetensors`` package, in the ``train`` extra)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"no such file '{path}'; give an OpenCLIP .pt/.bin/.safetensors")
    if path.suffix == ".safetensors":
        safetensors_torch = _safetensors(field)
        try:
            return dict(safetensors_torch.load_file(str(path)))
        except Exception as exc:  # the library raises its own error types
            raise ConfigError(field, f"cannot read '{path}': {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many kinds
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(field, f"cannot read '{path}' as a torch state_dict ({reason})") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(field, f"'{path}' holds a {type(obj).__name__}, not a state_dict")
    return dict(unwrap_checkpoint(obj))


def save_state_dict_file(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write ``state_dict`` to ``path`` atomically (temp file + rename): ``.safetensors`` with
    the ``safetensors`` package, anything else with ``torch.save``."""
    from vlscale.paths import atomic_path

    with atomic_path(path) as tmp:
        if Path(path).suffix == ".safetensors":
            _safetensors("out").save_file(dict(state_dict), str(tmp))
        else:
            torch.save(dict(state_dict), tmp)


def _safetensors(field: str):
    try:
        import safetensors.torch as safetensors_torch
    except ImportError:
        raise ConfigError(
            field, "reading .safetensors needs the safetensors package (pip install safetensors)"
        ) from None
    return safetensors_torch
