"""Hardware catalog, clusters and user hardware files."""

from __future__ import annotations

import textwrap

import pytest

from vlscale.errors import ConfigError
from vlscale.specs.hardware import (
    DeviceSpec,
    catalog_name,
    default_slice_shape,
    dump_hardware_file,
    find_device,
    get_device,
    list_devices,
    load_hardware_file,
    make_cluster,
)

REQUIRED = {
    "V100",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H200",
    "B200",
    "TPUv3",
    "TPUv4",
    "TPUv5e",
    "TPUv5p",
    "TPUv6e",
}


# --------------------------------------------------------------------------- catalog


def test_catalog_has_every_required_device():
    assert set(list_devices()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_value_group_has_a_source(name):
    d = get_device(name)
    groups = [d.peak_flops, d.memory, d.network, d.price, d.nvlink or d.ici]
    for group in groups:
        assert group is not None
        # A source names a document, not a placeholder.
        assert len(group.source) > 20, (name, type(group).__name__, group.source)
    assert (d.nvlink is not None) == (d.kind == "gpu")
    assert (d.ici is not None) == (d.kind == "tpu")
    assert d.peak_flops.bf16 or d.peak_flops.fp16


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_numbers_are_in_si_units(name):
    """Catches TFLOPS / GB/s / Gb/s slipping into the data instead of FLOP/s, bytes, bytes/s."""
    d = get_device(name)
    for dtype in ("fp32", "tf32", "bf16", "fp16"):
        value = getattr(d.peak_flops, dtype)
        assert value is None or 1e12 < value < 1e17
    assert 8e9 < d.memory.hbm_bytes < 1e12
    assert 1e11 < d.memory.hbm_bandwidth < 1e14
    assert 1e9 < d.network.nic_bandwidth < 1e12
    fabric = d.nvlink.bandwidth if d.nvlink else d.ici.link_bandwidth
    assert 1e10 < fabric < 1e13
    assert 0 < d.price.usd_per_hour < 100


def test_dense_not_sparse_and_generation_order():
    """Dense peaks grow with GPU generation, and same-chip variants share compute."""
    bf16 = {n: get_device(n).peak_flops.bf16 for n in ("A100-40GB", "H100", "B200")}
    assert bf16["A100-40GB"] < bf16["H100"] < bf16["B200"]
    assert get_device("A100-80GB").peak_flops == get_device("A100-40GB").peak_flops.model_copy(
        update={"source": get_device("A100-80GB").peak_flops.source}
    )
    assert get_device("H200").memory.hbm_bytes > get_device("H100").memory.hbm_bytes


@pytest.mark.parametrize(
    "query, name",
    [
        ("h100", "H100"),
        ("H100-SXM", "H100"),
        ("a100-80gb", "A100-80GB"),
        ("tpu v5e", "TPUv5e"),
        ("TPUV5P", "TPUv5p"),
        ("v6e", "TPUv6e"),
        ("Trillium", "TPUv6e"),
        ("tpu_v4", "TPUv4"),
    ],
)
def test_lookup_is_case_insensitive(query, name):
    assert get_device(query).name == name


def test_aliases_do_not_collide():
    seen: dict[str, str] = {}
    for name in list_devices():
        d = get_device(name)
        for alias in (d.name, *d.aliases):
            key = alias.lower().replace("-", "").replace("_", "").replace(" ", "")
            assert seen.setdefault(key, name) == name, alias


@pytest.mark.parametrize(
    "description, name",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),  # the longest alias wins over "A100"
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("h200", "H200"),
        ("tpu v5e", "TPUv5e"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_find_device_names_the_catalog_device_in_a_description(description, name):
    assert find_device(description) == name


def test_catalog_name_is_exact_and_quiet():
    assert catalog_name("a100 80gb") == "A100-80GB"
    assert catalog_name("H100-measured") is None


def test_unknown_device_lists_close_matches():
    with pytest.raises(ConfigError) as err:
        get_device("H10")
    assert err.value.field == "device"
    assert "H100" in str(err.value)


def test_missing_dtype_names_the_available_ones():
    assert get_device("H100").peak("bf16") == get_device("H100").peak_flops.bf16
    with pytest.raises(ConfigError, match="fp16"):
        get_device("V100").peak("bf16")


def test_tpu_cores_are_not_chips():
    assert get_device("TPUv3").chips_from_cores(256) == 128
    assert get_device("TPUv5e").chips_from_cores(256) == 256
    with pytest.raises(ConfigError):
        get_device("TPUv4").chips_from_cores(7)


# --------------------------------------------------------------------------- clusters


def test_gpu_cluster_nodes():
    c = make_cluster("H100", 64)
    assert (c.node_size, c.num_nodes) == (8, 8)
    assert c.usd_per_hour == pytest.approx(64 * c.device.price.usd_per_hour)
    partial = make_cluster("A100", 4)
    assert (partial.node_size, partial.num_nodes) == (4, 1)


def test_gpu_cluster_must_fill_nodes():
    with pytest.raises(ConfigError) as err:
        make_cluster("H100", 12)
    assert "8" in str(err.value) and "16" in str(err.value)
    assert make_cluster("H100", 12, devices_per_node=4).num_nodes == 3


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(slice_shape=(2, 2)), "slice_shape"),
        (dict(num_slices=2), "num_slices"),
    ],
)
def test_gpu_cluster_rejects_tpu_fields(kw, words):
    with pytest.raises(ConfigError, match=words):
        make_cluster("H100", 16, **kw)


# Shapes listed in the Cloud TPU docs' configuration tables (v5p, v5e).
V5P_SHAPES = {
    4: (2, 2, 1),
    8: (2, 2, 2),
    32: (2, 4, 4),
    64: (4, 4, 4),
    128: (4, 4, 8),
    256: (4, 8, 8),
    512: (8, 8, 8),
    1024: (8, 8, 16),
    2048: (8, 16, 16),
    4096: (16, 16, 16),
}
V5E_SHAPES = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 128: (8, 16), 256: (16, 16)}


@pytest.mark.parametrize("device, table", [("TPUv5p", V5P_SHAPES), ("TPUv5e", V5E_SHAPES)])
def test_default_slice_shapes_match_cloud_docs(device, table):
    for chips, shape in table.items():
        assert default_slice_shape(get_device(device), chips) == shape


def test_wraparound_rules():
    assert make_cluster("v5p", 64).wraparound == (True, True, True)  # one full cube
    assert make_cluster("v5p", 32).wraparound == (False, False, False)  # less than a cube
    assert make_cluster("v5p", 128).wraparound == (True, True, True)  # 4x4x8
    assert make_cluster("v5e", 128).wraparound == (False, True)  # 8x16: only the full axis
    assert make_cluster("v5e", 256).wraparound == (True, True)


def test_tpu_cluster_validation():
    with pytest.raises(ConfigError, match="num_slices"):
        make_cluster("v5e", 512)  # more than one 256-chip pod
    ms = make_cluster("v5e", 512, num_slices=2)
    assert (ms.slice_dims, ms.slice_size) == ((16, 16), 256)
    with pytest.raises(ConfigError, match="agree"):
        make_cluster("v5p", 64, slice_shape=(4, 4, 2))
    with pytest.raises(ConfigError, match="3-D"):
        make_cluster("v5p", 16, slice_shape=(4, 4))
    with pytest.raises(ConfigError, match="equal"):
        make_cluster("v5e", 100, num_slices=3)


@pytest.mark.parametrize(
    "device, shape, words",
    [
        ("v5p", (4, 4, 6), "multiple of 4"),  # 96 chips: not a cube multiple, not below one
        ("v5p", (2, 2, 6), "multiple of 4"),
        ("v5p", (16, 20, 28), "6144"),  # the whole pod is not one slice (largest 16x16x24)
        ("v4", (4, 4, 2), None),  # 2x4x4 below a cube (Cloud docs)
        ("v5e", (4, 16), "2:1"),  # 64 chips are 8x8 on v5e
        ("v5e", (8, 12), "powers of two"),
        ("v6e", (8, 16), None),
        ("v5p", (1, 2, 1), None),  # part of one 4-chip host
    ],
)
def test_slice_shapes_follow_each_generations_rules(device, shape, words):
    chips = 1
    for d in shape:
        chips *= d
    if words is None:
        assert make_cluster(device, chips, slice_shape=shape).slice_dims == shape
        return
    with pytest.raises(ConfigError, match=words):
        make_cluster(device, chips, slice_shape=shape)


def test_largest_v5p_slice_and_multislice_beyond():
    assert make_cluster("v5p", 6144).slice_dims == (16, 16, 24)
    with pytest.raises(ConfigError, match="num_slices"):
        make_cluster("v5p", 8960)
    assert make_cluster("v5p", 12288, num_slices=2).slice_dims == (16, 16, 24)


def test_corrected_catalog_values():
    """The values issue 8 checked against their sources (each named in the data)."""
    gib = 2**30
    assert get_device("TPUv6e").memory.hbm_bandwidth == 1638e9
    assert get_device("TPUv4").ici.link_bandwidth == 45e9
    assert get_device("B200").memory.hbm_bandwidth == pytest.approx(7.67e12)
    assert get_device("A100-40GB").memory.hbm_bytes == pytest.approx(40 * gib, rel=1e-3)
    assert get_device("A100-80GB").memory.hbm_bytes == pytest.approx(80 * gib, rel=1e-3)
    # NVLink SHARP only on third-generation NVSwitch nodes; DGX-1 has no switch at all.
    reduce_in_switch = {n: get_device(n).nvlink.switch_reduction for n in ("V100", "A100", "H100")}
    assert reduce_in_switch == {"V100": False, "A100": False, "H100": True}
    assert get_device("H200").nvlink.switch_reduction and get_device("B200").nvlink.switch_reduction
    # What is not published stays labelled as such.
    assert "UNCERTAIN" in get_device("TPUv3").network.source
    assert "UNCERTAIN" in get_device("TPUv4").network.source


# --------------------------------------------------------------------------- user files

USER_YAML = """
devices:
  - base: H100
    name: h100-lab
    measured:
      matmul_efficiency: 0.6
      source: "measured on lab box"
      links:
        nvlink: {alpha_s: 2.0e-6, efficiency: 0.7}
clusters:
  - {name: lab, device: h100-lab, num_devices: 16}
  - {name: pod, device: TPUv5e, num_devices: 512, num_slices: 2}
"""


def test_user_file_with_base_and_measured(tmp_path):
    path = tmp_path / "hw.yaml"
    path.write_text(USER_YAML)
    hw = load_hardware_file(path)
    dev = hw.devices["h100-lab"]
    assert dev.peak_flops == get_device("H100").peak_flops  # inherited from the base
    assert dev.measured.links["nvlink"].alpha_s == 2.0e-6
    assert dev.aliases == ()  # the catalog H100's aliases stay with it
    assert hw.clusters["lab"].device == dev and hw.clusters["lab"].num_nodes == 2
    assert hw.clusters["pod"].num_slices == 2
    assert get_device("H100-LAB", extra=hw.devices) == dev
    assert make_cluster("h100-lab", 8, extra_devices=hw.devices).device == dev


def test_user_file_round_trip(tmp_path):
    src = tmp_path / "in.yaml"
    src.write_text(USER_YAML)
    hw = load_hardware_file(src)
    out = tmp_path / "out.yaml"
    dump_hardware_file(out, clusters=list(hw.clusters.values()))
    again = load_hardware_file(out)
    assert again.clusters == hw.clusters
    assert again.devices == hw.devices  # the non-catalog device is written along


def test_toml_file_equals_yaml(tmp_path):
    toml = tmp_path / "hw.toml"
    toml.write_text(
        textwrap.dedent(
            """
            [[devices]]
            base = "H100"
            name = "h100-lab"
            [devices.measured]
            matmul_efficiency = 0.6
            source = "measured on lab box"
            [devices.measured.links.nvlink]
            alpha_s = 2.0e-6
            efficiency = 0.7

            [[clusters]]
            name = "lab"
            device = "h100-lab"
            num_devices = 16
            """
        )
    )
    yaml_path = tmp_path / "hw.yaml"
    yaml_path.write_text(USER_YAML)
    assert load_hardware_file(toml).devices == load_hardware_file(yaml_path).devices


def test_full_device_definition(tmp_path):
    """A device written out in full (no base) is validated like the catalog."""
    full = get_device("TPUv6e").model_dump(mode="json") | {"name": "my-tpu", "aliases": []}
    path = tmp_path / "dev.yaml"
    dump_hardware_file(path, devices=[DeviceSpec.model_validate(full)])
    assert load_hardware_file(path).devices["my-tpu"].ici == get_device("TPUv6e").ici


BAD_FILES = {
    "syntax.yaml": ("devices: [\n  - name: x", "not valid YAML"),
    "top.yaml": ("gpus: []", "devices"),
    "empty.yaml": ("", "mapping"),
    "missing.yaml": ("devices:\n  - {name: x, kind: gpu, devices_per_node: 8}", "missing; add"),
    "negative.yaml": ("devices:\n  - {base: H100, name: y, memory: {hbm_bandwidth: -1}}", "memory"),
    "kind.yaml": ("devices:\n  - {base: H100, name: z, kind: tpu}", "ici"),
    "base.yaml": ("devices:\n  - {base: H1000, name: q}", "H100"),
    "cluster_dev.yaml": ("clusters:\n  - {name: c, device: nope, num_devices: 8}", "nope"),
    "cluster_n.yaml": ("clusters:\n  - {name: c, device: H100, num_devices: 12}", "16"),
    "cluster_name.yaml": ("clusters:\n  - {device: H100, num_devices: 8}", "name"),
    "links.yaml": ("devices:\n  - {base: TPUv5p, name: l, ici: {links_per_chip: 4}}", "3-D torus"),
    "typo.yaml": (
        "devices:\n  - {base: H100, name: t, pirce: {usd_per_hour: 1}}",
        "pirce: unknown",
    ),
    "ext.json": ("{}", ".yaml"),
}


@pytest.mark.parametrize("fname", sorted(BAD_FILES))
def test_bad_files_give_one_clear_config_error(tmp_path, fname):
    text, words = BAD_FILES[fname]
    path = tmp_path / fname
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_hardware_file(path)
    msg = str(err.value)
    assert words in msg, msg
    assert fname in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_hardware_file(tmp_path / "absent.yaml")
