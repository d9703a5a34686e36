"""CLIP's ResNet image tower as layers (``models.resnet``): the stem, one bottleneck per block,
the attention pool.

Notation: b local batch, w stem width, p a bottleneck's planes (its output is 4p channels), C
= 32w the pooled width, g = image_size / 32 the final grid, L = g² + 1 pool tokens (the mean
token first), e embed_dim, n = b·H·W elements per channel of a feature map of side H.

Convolutions are implicit GEMMs: a k×k convolution over a (b, C_in, H, W) map to C_out channels
at output side H_o is the matmul M = b·H_o·W_o, N = C_out, K = C_in·k² — 2·M·N·K FLOPs, as
FlopCounterMode counts ``convolution``; its bytes are the input map, the weight and the output
map (the im2col matrix is never written). Backward is dX and dW, 2·M·N·K each (the stem's first
conv reads pixels: dW only). Batch norm (training mode: batch statistics, then normalise),
ReLU, average pooling and the residual add are memory-bound ops with no FLOPs. The weight
gradient is a split-K GEMM (``conv_backward``), as cuDNN's weight-gradient kernels run it.

Parameters: every conv's weight (bias-free) and every batch norm's weight and bias. Each batch
norm also has buffers, running mean and variance (C fp32 each) and ``num_batches_tracked``
(one int64): ``buffer_bytes``. FSDP2 shards parameters, not buffers, so each rank holds all of
them; the memory model does not add them (under 1 MB per rank even for RN50x64), and they are
never reduced across ranks (per-rank statistics, as OpenCLIP: no SyncBatchNorm).

Saved for backward (autograd, checked with saved-tensor hooks in
tests/test_activation_memory_torch.py): each conv its input; each batch norm its input and
its batch mean and inverse std (2 fp32 per channel); each ReLU its output; each average pool its
input (already saved: a ReLU's output or the block input). A block's output is the next block's
input, so a bottleneck counts its input and not its output, except the last one, whose output
only its own ReLU saves (the pool's mean, cat and position add save no tensor).
"""

from __future__ import annotations

from vlscale.costs.dtypes import INDEX_BYTES, STAT_BYTES
from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import Op, OpList, Phase, Saved, Shape
from vlscale.specs.towers import RESNET_EXPANSION

Conv = tuple[int, int, int, int, int]  # c_in, c_out, kernel side, input side, output side
SPLIT_K_ROWS = 1 << 14  # rows of the weight gradient's reduction per split-K chunk


def _conv_gemm(b: int, conv: Conv) -> tuple[int, int, int]:
    """(M, N, K) of a convolution as an implicit GEMM."""
    c_in, c_out, k, _, side_out = conv
    return b * side_out**2, c_out, c_in * k * k


def _gemm(
    ops: OpList,
    name: str,
    phase: Phase,
    shape: tuple[int, int, int, int],
    flops: float,
    elements: float,
) -> None:
    """One (batched) GEMM of ``shape`` (g, m, n, k), ``flops`` in all, ``elements`` moved."""
    bytes_ = elements * ops.act_bytes
    ops.add(Op(name, "matmul", phase, flops, bytes_, 1, shape, dtype=ops.dtype))


def conv_forward(ops: OpList, name: str, b: int, conv: Conv, phase: Phase) -> None:
    """Y = conv(X, W): 2·M·N·K FLOPs; reads the input map and the weight, writes the output."""
    m, n, k = _conv_gemm(b, conv)
    x = b * conv[0] * conv[3] ** 2
    _gemm(ops, name, phase, (1, m, n, k), 2.0 * m * n * k, x + n * k + m * n)


def conv_backward(ops: OpList, name: str, b: int, conv: Conv, dx: bool = True) -> None:
    """dX[M, K] = dY[M, N]·W[N, K] folded back onto the input map (skipped when the input is
    data) and dW[N, K] = dYᵀ·X, each 2·M·N·K, as FlopCounterMode counts
    ``convolution_backward``; each reads two of dY, W, X and writes the third's gradient.

    dW has a small output (N·K, e.g. 64 x 576) and a long reduction (M = b·H·W rows): weight-
    gradient kernels split that reduction (split-K) so that the device fills, and so does this
    op list: g = ⌊M / SPLIT_K_ROWS⌋ GEMMs of M / g rows each, plus the g·N·K partial sums
    written and read once more."""
    m, n, k = _conv_gemm(b, conv)
    flops, elements = 2.0 * m * n * k, b * conv[0] * conv[3] ** 2 + n * k + m * n
    if dx:
        _gemm(ops, f"{name}.dx", "backward", (1, m, k, n), flops, elements)
    g = max(1, m // SPLIT_K_ROWS)
    partial = 2 * g * n * k if g > 1 else 0
    _gemm(ops, f"{name}.dw", "backward", (g, n, k, -(-m // g)), flops, elements + partial)


def bn_relu(ops: OpList, name: str, n: int, phase: Phase, relu: bool = True) -> None:
    """Training batch norm over n elements (statistics read x, normalise reads x and writes
    y: 3n), then ReLU (2n)."""
    ops.elementwise(f"{name}.bn", 3 * n, phase)
    if relu:
        ops.elementwise(f"{name}.relu", 2 * n, phase)


def bn_relu_backward(ops: OpList, name: str, n: int, relu: bool = True) -> None:
    """ReLU backward (dY and the output read, dX written: 3n), batch-norm backward (dY and x
    read, dX written, with its two channel reductions: 3n)."""
    if relu:
        ops.elementwise(f"{name}.relu.grad", 3 * n, "backward")
    ops.elementwise(f"{name}.bn.grad", 3 * n, "backward")


def _bn_shapes(c: int) -> list[Shape]:
    return [(c,), (c,)]


def _bn_buffer_bytes(channels: list[int]) -> int:
    return sum(2 * c * STAT_BYTES + INDEX_BYTES for c in channels)


class ResNetStem(Layer, kind="resnet_stem", role="stem"):
    """3x3 conv 3 -> w/2 (stride 2), 3x3 w/2 -> w/2, 3x3 w/2 -> w, each with batch norm and
    ReLU, then a 2x2 average pool: (b, 3, H, H) -> (b, w, H/4, H/4)."""

    image_size: int
    width: int

    @property
    def convs(self) -> list[Conv]:
        w, h = self.width, self.image_size
        return [(3, w // 2, 3, h, h // 2), (w // 2, w // 2, 3, h // 2, h // 2),
                (w // 2, w, 3, h // 2, h // 2)]  # fmt: skip

    def param_shapes(self) -> list[Shape]:
        shapes: list[Shape] = []
        for c_in, c_out, k, _, _ in self.convs:
            shapes += [(c_out, c_in, k, k), *_bn_shapes(c_out)]
        return shapes

    def buffer_bytes(self) -> int:
        return _bn_buffer_bytes([c[1] for c in self.convs])

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        for i, conv in enumerate(self.convs, 1):
            conv_forward(ops, f"{self.name}.stem.conv{i}", b, conv, phase)
            bn_relu(ops, f"{self.name}.stem.{i}", b * conv[1] * conv[4] ** 2, phase)
        n = b * self.width * (self.image_size // 2) ** 2
        ops.elementwise(f"{self.name}.stem.pool", n + n // 4, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        n = b * self.width * (self.image_size // 2) ** 2
        ops.elementwise(f"{self.name}.stem.pool.grad", n + n // 4, "backward")
        for i, conv in reversed(list(enumerate(self.convs, 1))):
            bn_relu_backward(ops, f"{self.name}.stem.{i}", b * conv[1] * conv[4] ** 2)
            conv_backward(ops, f"{self.name}.stem.conv{i}", b, conv, dx=i > 1)

    def saved(self, b: int) -> Saved:
        # the images; per conv its output (bn input) and its ReLU's output (the next conv's or
        # the pool's input), and the batch statistics
        saved = Saved(act=b * 3 * self.image_size**2)
        for _, c_out, _, _, side in self.convs:
            saved += Saved(act=2 * b * c_out * side**2, fp32=2 * c_out)
        return saved


class ResNetBottleneck(Layer, kind="resnet_bottleneck", role="block"):
    """1x1 conv c_in -> p, 3x3 p -> p, [AvgPool s], 1x1 p -> 4p, each with batch norm, ReLU after
    the first two; the shortcut is x, or [AvgPool s] -> 1x1 conv c_in -> 4p -> batch norm when
    the shape changes; out = ReLU(branch + shortcut). ``side`` is the input map's side."""

    c_in: int
    planes: int
    stride: int
    side: int
    last: bool = False

    @property
    def c_out(self) -> int:
        return self.planes * RESNET_EXPANSION

    @property
    def side_out(self) -> int:
        return self.side // self.stride

    @property
    def reshapes(self) -> bool:
        """True when the block has the shortcut conv (``models.resnet.Shortcut``)."""
        return self.stride > 1 or self.c_in != self.c_out

    @property
    def convs(self) -> dict[str, Conv]:
        p, s, so = self.planes, self.side, self.side_out
        convs = {"conv1": (self.c_in, p, 1, s, s), "conv2": (p, p, 3, s, s),
                 "conv3": (p, self.c_out, 1, so, so)}  # fmt: skip
        if self.reshapes:
            convs["downsample"] = (self.c_in, self.c_out, 1, so, so)
        return convs

    def param_shapes(self) -> list[Shape]:
        shapes: list[Shape] = []
        for c_in, c_out, k, _, _ in self.convs.values():
            shapes += [(c_out, c_in, k, k), *_bn_shapes(c_out)]
        return shapes

    def buffer_bytes(self) -> int:
        return _bn_buffer_bytes([c[1] for c in self.convs.values()])

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        name, convs, p = self.name, self.convs, self.planes
        n_in, n_out = b * self.side**2, b * self.side_out**2
        for i in ("conv1", "conv2"):
            conv_forward(ops, f"{name}.{i}", b, convs[i], phase)
            bn_relu(ops, f"{name}.{i}", p * n_in, phase)
        if self.stride > 1:
            ops.elementwise(f"{name}.pool", p * (n_in + n_out), phase)
        conv_forward(ops, f"{name}.conv3", b, convs["conv3"], phase)
        bn_relu(ops, f"{name}.conv3", self.c_out * n_out, phase, relu=False)
        if self.reshapes:
            if self.stride > 1:
                ops.elementwise(f"{name}.downsample.pool", self.c_in * (n_in + n_out), phase)
            conv_forward(ops, f"{name}.downsample", b, convs["downsample"], phase)
            bn_relu(ops, f"{name}.downsample", self.c_out * n_out, phase, relu=False)
        ops.elementwise(f"{name}.residual", 3 * self.c_out * n_out, phase)
        ops.elementwise(f"{name}.relu", 2 * self.c_out * n_out, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        name, convs, p = self.name, self.convs, self.planes
        n_in, n_out = b * self.side**2, b * self.side_out**2
        ops.elementwise(f"{name}.relu.grad", 3 * self.c_out * n_out, "backward")
        if self.reshapes:
            bn_relu_backward(ops, f"{name}.downsample", self.c_out * n_out, relu=False)
            conv_backward(ops, f"{name}.downsample", b, convs["downsample"])
            if self.stride > 1:
                ops.elementwise(f"{name}.downsample.pool.grad", self.c_in * (n_in + n_out),
                                "backward")  # fmt: skip
        bn_relu_backward(ops, f"{name}.conv3", self.c_out * n_out, relu=False)
        conv_backward(ops, f"{name}.conv3", b, convs["conv3"])
        if self.stride > 1:
            ops.elementwise(f"{name}.pool.grad", p * (n_in + n_out), "backward")
        for i in ("conv2", "conv1"):
            bn_relu_backward(ops, f"{name}.{i}", p * n_in)
            conv_backward(ops, f"{name}.{i}", b, convs[i])
        # the branch's and the shortcut's input gradients meet at the block input
        ops.elementwise(f"{name}.residual.grad", 3 * self.c_in * n_in, "backward")

    def saved(self, b: int) -> Saved:
        p, c_out = self.planes, self.c_out
        n_in, n_out = b * self.side**2, b * self.side_out**2
        # the input (conv1's, the shortcut's); conv1 and conv2: output and ReLU output
        saved = Saved(act=self.c_in * n_in + 4 * p * n_in, fp32=4 * p)
        if self.stride > 1:  # the pooled map, conv3's input
            saved += Saved(act=p * n_out)
        saved += Saved(act=c_out * n_out, fp32=2 * c_out)  # conv3's output, bn3's statistics
        if self.reshapes:  # [the pooled input,] the shortcut conv's output, its statistics
            pooled = self.c_in * n_out if self.stride > 1 else 0
            saved += Saved(act=pooled + c_out * n_out, fp32=2 * c_out)
        if self.last:  # the final ReLU's output; otherwise it is the next block's input
            saved += Saved(act=c_out * n_out)
        return saved

    def checkpoint_saved(self, b: int) -> Saved:
        return Saved(act=b * self.c_in * self.side**2)


class ResNetAttentionPool(Layer, kind="resnet_attention_pool", role="head"):
    """The mean token prepended to the g² features, + positions (L, C); the mean token's query
    (q: Linear(C, C)) attends over all L tokens (kv: Linear(C, 2C)) with ``heads`` heads; its
    output is projected by Linear(C, e). All Linears are biased. An FSDP unit of its own
    (``visual.pool``): a tenth of RN50x64's image tower, gathered only while it runs.

    Forward per sample: q 2C² + kv 4·L·C² + attention 4·L·C + proj 2·C·e FLOPs."""

    own_unit = True

    @property
    def unit_name(self) -> str:
        return f"{self.name}.pool"

    grid: int
    width: int
    heads: int
    embed_dim: int

    @property
    def tokens(self) -> int:
        return self.grid**2 + 1

    def param_shapes(self) -> list[Shape]:
        c, e = self.width, self.embed_dim
        return [(self.tokens, c), (c, c), (c,), (2 * c, c), (2 * c,), (e, c), (e,)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        c, s, name = self.width, self.tokens, f"{self.name}.pool"
        g2 = self.grid**2
        ops.elementwise(f"{name}.mean", b * g2 * c + b * c, phase)
        ops.elementwise(f"{name}.cat_pos", 2 * b * s * c + 3 * b * s * c, phase, kernels=2)
        ops.linear(f"{name}.q", b, c, c, True, phase)
        ops.linear(f"{name}.kv", b * s, 2 * c, c, True, phase)
        ops.attention(f"{name}.sdpa", b * self.heads, 1, s, c // self.heads, False, phase)
        ops.linear(f"{name}.proj", b, self.embed_dim, c, True, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        c, s, name = self.width, self.tokens, f"{self.name}.pool"
        g2 = self.grid**2
        ops.linear_backward(f"{name}.proj", b, self.embed_dim, c, True, dx=True)
        hd = c // self.heads
        ops.attention(f"{name}.sdpa.grad", b * self.heads, 1, s, hd, False, "backward")
        ops.linear_backward(f"{name}.kv", b * s, 2 * c, c, True, dx=True)
        ops.linear_backward(f"{name}.q", b, c, c, True, dx=True)
        # position gradient (Σ over b), the slice back out of the cat, the mean's broadcast
        ops.elementwise(f"{name}.cat_pos.grad", 2 * b * s * c + s * c, "backward", kernels=2)
        ops.elementwise(f"{name}.mean.grad", b * c + 2 * b * g2 * c, "backward")

    def saved(self, b: int) -> Saved:
        # the tokens (q's and kv's input), q, k and v, the attention output (proj's input) and
        # its logsumexp; the feature map itself is counted by the last bottleneck
        c, s = self.width, self.tokens
        return Saved(act=b * s * c + b * c + 2 * b * s * c + b * c, fp32=b * self.heads)
