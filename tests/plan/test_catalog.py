"""torchtpu.plan.catalog: the chip catalog's figures, their sources, and user overrides."""

import doctest
import re

import pytest

from torchtpu.plan import catalog as catalog_module
from torchtpu.plan.catalog import (
    DTYPES,
    ENV_VAR,
    TOPOLOGIES,
    CatalogError,
    Figure,
    catalog_table,
    chip,
    load_catalog,
    load_sources,
)

DATE = re.compile(r"\d{4}-\d{2}(-\d{2})?\Z")
GiB = 2**30


@pytest.fixture(autouse=True)
def no_user_catalog(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def packaged():
    return load_catalog(overrides=None)


def figures(c):
    for dtype, fig in c.peak_flops.items():
        yield f"peak_flops.{dtype}", fig
    for name in ("memory_bytes", "memory_bw", "link_bw", "tdp_w", "price_per_hour"):
        if getattr(c, name) is not None:
            yield name, getattr(c, name)
    yield "matmul_efficiency", c.matmul_efficiency


def test_coverage(packaged):
    assert len(packaged) >= 14
    assert len({c.vendor for c in packaged.values()}) >= 5
    for key in ("h100", "h200", "b200", "gb200", "mi300x", "mi325x", "mi355x", "tpu-v5e"):
        assert key in packaged
    for key in ("tpu-v5p", "tpu-v6e", "tpu7x", "trn2", "trn3", "gaudi3", "ascend-910c"):
        assert key in packaged
    assert "local" not in packaged  # measured by the planner, not catalogued


def test_every_figure_has_source_and_date(packaged):
    sources = load_sources(overrides=None)
    for key, c in packaged.items():
        assert c.key == key and c.name and c.vendor
        assert c.domain >= 1 and c.topology in TOPOLOGIES
        assert "bf16" in c.peak_flops and set(c.peak_flops) <= set(DTYPES)
        for name, fig in figures(c):
            assert isinstance(fig, Figure), (key, name)
            assert fig.value > 0, (key, name)
            assert fig.source.startswith("https://") or fig.source in sources, (key, name)
            assert DATE.match(fig.date), (key, name, fig.date)
            assert isinstance(fig.verified, bool)
        assert 0 < c.matmul_efficiency.value <= 1
        assert (c.price_per_hour is None) == (c.price_provider is None)


def test_units_converted_as_the_sources_print_them(packaged):
    # TFLOP/s -> FLOP/s, dense (NVIDIA's 1,979 sparse is 989 dense).
    assert packaged["h100"].peak("bf16").value == 989e12
    assert packaged["mi300x"].peak("fp8").value == pytest.approx(2614.9e12)
    # GB/s and TB/s -> bytes/s, decimal.
    assert packaged["tpu-v6e"].memory_bw.value == 1.638e12
    assert packaged["h100"].memory_bw.value == 3.35e12
    # GB is 1e9 and GiB is 2**30, as the vendor labels it.
    assert packaged["mi300x"].memory_bytes.value == 192e9
    assert packaged["tpu-v5p"].memory_bytes.value == 95 * GiB
    assert packaged["trn2"].memory_bytes.value == 96 * GiB
    # Links: one direction, summed over the chip's links.
    assert packaged["h100"].link_bw.value == 450e9  # NVLink 4: 900 GB/s bidirectional
    assert packaged["b200"].link_bw.value == 900e9  # NVLink 5: 1.8 TB/s bidirectional
    assert packaged["tpu-v6e"].link_bw.value == 400e9  # ICI: 800 GB/s bidirectional
    assert packaged["mi300x"].link_bw.value == 448e9  # 7 x 128 GB/s, halved
    assert packaged["gaudi3"].link_bw.value == 525e9  # 21 x 200 Gbit/s
    assert packaged["gb200"].domain == 72 and packaged["tpu-v6e"].domain == 256
    assert packaged["h100"].tdp_w.value == 700
    assert packaged["tpu-v6e"].price_per_hour.value == 2.70
    assert packaged["h100"].matmul_efficiency.value == pytest.approx(794.5 / 989, abs=1e-3)


def test_estimates_are_marked(packaged):
    assert packaged["h100"].estimates() == ["price_per_hour"]
    assert packaged["h100"].peak("bf16").verified
    assert "memory_bytes" in packaged["ascend-910c"].estimates()  # press figure
    assert "matmul_efficiency" in packaged["tpu-v6e"].estimates()  # no published measurement
    assert "peak_flops.fp32" in packaged["b200"].estimates()  # sources disagree
    assert "link_bw" in packaged["mi300x"].estimates()  # direction assumed


def test_peak_falls_back_between_fp16_and_bf16_only(packaged):
    v5e = packaged["tpu-v5e"]
    assert v5e.peak("fp16") is v5e.peak("bf16")
    assert v5e.peak("torch.bfloat16") is v5e.peak("bf16")
    assert packaged["h100"].peak("float8_e4m3fn").value == 1979e12
    with pytest.raises(KeyError, match=r"Google TPU v5e \('tpu-v5e'\) has no dense fp32") as e:
        v5e.peak("fp32")
    assert "it lists bf16" in str(e.value) and "not mapped to tf32" in str(e.value)
    with pytest.raises(KeyError, match="unknown dtype 'int4'"):
        v5e.peak("int4")


def test_unknown_chip_lists_known_keys(packaged):
    with pytest.raises(KeyError, match="Did you mean 'h100'.*Known chips: h100, h200"):
        chip("h10", packaged)
    with pytest.raises(KeyError, match="measures the local CPU"):
        chip("local", packaged)
    assert chip("tpu7x").name == "Google TPU7x (Ironwood)"


def test_user_file_overrides_one_price(tmp_path, monkeypatch, packaged):
    user = tmp_path / "my-chips.toml"
    user.write_text(
        "[chips.h100]\n"
        'price_per_hour = { value = 2.49, unit = "USD/h", provider = "Acme Cloud",'
        ' source = "https://acme.example/pricing", date = "2026-12-01", verified = true }\n'
    )
    monkeypatch.setenv(ENV_VAR, str(user))
    mine = load_catalog()
    h100 = mine["h100"]
    assert h100.price_per_hour == Figure(2.49, "https://acme.example/pricing", "2026-12-01", True)
    assert h100.price_provider == "Acme Cloud"
    assert h100.estimates() == []
    assert h100.peak_flops == packaged["h100"].peak_flops
    assert h100.memory_bw == packaged["h100"].memory_bw
    assert {k: c for k, c in mine.items() if k != "h100"} == {
        k: c for k, c in packaged.items() if k != "h100"
    }


def test_user_file_adds_a_chip_and_a_dtype(tmp_path, packaged):
    user = tmp_path / "more.toml"
    user.write_text(
        """
[sources]
lab = { title = "our own measurement" }

[chips.tpu-v5e]
peak_flops.fp32 = { value = 65, unit = "TFLOP/s", source = "lab", date = 2026-12-01 }

[chips.box]
name = "Lab box"
vendor = "Us"
domain = 4
topology = "ring"
peak_flops.bf16 = { value = 100, unit = "TFLOP/s", source = "lab", date = "2026-12" }
memory_bytes = { value = 24, unit = "GiB", source = "lab", date = "2026-12" }
memory_bw = { value = 1, unit = "TB/s", source = "lab", date = "2026-12" }
matmul_efficiency = { value = 70, unit = "%", source = "lab", date = "2026-12" }
"""
    )
    mine = load_catalog(overrides=user)
    v5e = mine["tpu-v5e"]
    assert v5e.peak("fp32").date == "2026-12-01" and not v5e.peak("fp32").verified
    assert v5e.peak("bf16") == packaged["tpu-v5e"].peak("bf16")  # merged per dtype
    box = mine["box"]
    assert box.memory_bytes.value == 24 * GiB and box.matmul_efficiency.value == 0.7
    assert box.link_bw is None and box.price_per_hour is None
    assert box.estimates() == [
        "peak_flops.bf16",
        "memory_bytes",
        "memory_bw",
        "matmul_efficiency",
    ]


FIG = 'source = "N1", date = "2026-11"'


@pytest.mark.parametrize(
    "body, message",
    [
        (
            f'memory_bwidth = {{ value = 3, unit = "TB/s", {FIG} }}',
            r"\[chips.h100\]: unknown field 'memory_bwidth'; did you mean 'memory_bw'",
        ),
        (
            f'memory_bw = {{ value = 3, unit = "GB", {FIG} }}',
            r"\[chips.h100\] memory_bw has unit 'GB'; use one of B/s, MB/s, GB/s",
        ),
        (
            f'tdp_w = {{ value = -700, unit = "W", {FIG} }}',
            r"\[chips.h100\] tdp_w: value must be positive, got -700",
        ),
        (
            'tdp_w = { value = 700, unit = "W", date = "2026-11" }',
            r"\[chips.h100\] tdp_w has no source",
        ),
        (
            'tdp_w = { value = 700, unit = "W", source = "N9", date = "2026-11" }',
            r"source 'N9' is neither a URL nor a key of \[sources\]",
        ),
        (
            'tdp_w = { value = 700, unit = "W", source = "N1", date = "Nov 2026" }',
            r"\[chips.h100\] tdp_w: date must be",
        ),
        (
            f'price_per_hour = {{ value = 2, unit = "USD/h", {FIG} }}',
            r"\[chips.h100\] price_per_hour has no provider",
        ),
        (
            f"matmul_efficiency = {{ value = 80, {FIG} }}",
            "a fraction of peak is at most 1, got 80",
        ),
        (
            f'peak_flops.int8 = {{ value = 3958, unit = "TFLOP/s", {FIG} }}',
            r"\[chips.h100\] peak_flops: unknown field 'int8'",
        ),
        ('topology = "tree"', r"topology is 'tree'; use one of switch, mesh"),
        ("memory_bw = 3.35", r"\[chips.h100\] memory_bw must be a figure like"),
        ("memory_bw = { value = 3.35", "is not valid TOML"),
    ],
)
def test_malformed_user_file_names_file_chip_and_field(tmp_path, body, message):
    user = tmp_path / "bad.toml"
    user.write_text(f"[chips.h100]\n{body}\n")
    with pytest.raises(CatalogError, match=message) as e:
        load_catalog(overrides=user)
    assert str(user) in str(e.value)


def test_incomplete_new_chip_says_what_is_missing(tmp_path, monkeypatch):
    user = tmp_path / "new.toml"
    user.write_text('[chips.mystery]\nname = "Mystery"\nvendor = "X"\n')
    monkeypatch.setenv(ENV_VAR, str(user))
    with pytest.raises(
        CatalogError,
        match=r"\[chips.mystery\] in .*new.toml \(named by "
        r"TORCHTPU_CHIPS\) has no domain, topology, peak_flops, memory_bytes",
    ):
        load_catalog()


def test_local_cannot_be_catalogued(tmp_path):
    user = tmp_path / "local.toml"
    user.write_text('[chips.local]\nname = "My laptop"\n')
    with pytest.raises(CatalogError, match="'local' is measured"):
        load_catalog(overrides=user)


def test_table_and_docstring_examples(packaged):
    table = catalog_table(packaged).splitlines()
    assert len(table) == 2 + len(packaged)
    assert (
        "| `tpu-v6e` | Google TPU v6e (Trillium) | 918 |"
        in table[2 + list(packaged).index("tpu-v6e")]
    )
    assert doctest.testmod(catalog_module).failed == 0
