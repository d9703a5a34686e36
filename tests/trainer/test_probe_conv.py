"""The probe's convolution timing (``trainer.probe.kernels.measure_convs``): each conv is
recorded with the implicit-GEMM shape the cost model prices it at, and compared with the fitted
GEMM curve (``trainer.probe.cpu.conv_report``)."""

from __future__ import annotations

import pytest

from trainer.probe.cpu import CONV_SHAPES, conv_report
from trainer.probe.kernels import conv_gemm_shape, measure_convs
from trainer.probe.timing import host_seconds
from vlscale.calibrate.probe_fits import predict_gemm_s
from vlscale.costs.layers import model_layers
from vlscale.costs.ops import unit_ops
from vlscale.specs import get_model
from vlscale.specs.compute_profile import MatmulCurve


def test_probe_shapes_are_the_cost_models_gemms():
    # every tiny-rn stride-1 conv the probe times is an op of the planner with the same shape
    spec, b = get_model("tiny-rn"), 16
    units = unit_ops(spec, local_batch=b, mask_ratio=0.0, precision="fp32", checkpointing=False)
    priced = {op.shape for u in units for op in u.forward if op.kind == "matmul"}
    blocks = [x for x in model_layers(spec).image if x.role == "block"]
    for shape in CONV_SHAPES[:4]:
        assert conv_gemm_shape(*shape) in priced, shape
    conv2 = blocks[0].convs["conv2"]  # (c_in, c_out, k, side in, side out)
    assert conv_gemm_shape(b, conv2[0], conv2[1], conv2[2], conv2[3]) in priced


def test_conv_report_compares_with_the_gemm_curve():
    shapes = [(2, 4, 8, 3, 8), (2, 8, 8, 1, 8)]
    samples = measure_convs(shapes, "fp32", "cpu", lambda fn: (fn(), 1e-3)[1], threads=1)
    assert [x.shape for x in samples] == [(1, 128, 8, 36), (1, 128, 8, 8)]
    curve = MatmulCurve(peak_fraction=0.5, flops_half=0.0, source="test")
    report = conv_report(samples, 1e9, curve, 1)
    expected = [predict_gemm_s(x, 1e9, curve, 1) / 1e-3 for x in samples]
    assert [r["fraction"] for r in report["samples"]] == pytest.approx(expected)
    assert report["median_fraction"] == pytest.approx(sum(expected) / 2)


def test_a_real_conv_is_timed():
    (sample,) = measure_convs([(1, 4, 4, 3, 8)], "fp32", "cpu", host_seconds)
    assert sample.seconds > 0 and sample.flops == 2.0 * 64 * 4 * 36
