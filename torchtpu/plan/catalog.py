"""The chip catalog: what each accelerator can do, and where each figure comes from.

The figures are data, in ``chips.toml`` beside this module: dense peak FLOP/s per dtype,
memory size and bandwidth, scale-up link bandwidth and domain, power, an on-demand price,
and the fraction of peak that large matmuls reach. Each figure carries its source, its
date and whether it is verified; an unverified one is an estimate, and the planner marks
every result that uses it. Users change prices without editing the packaged file: the
environment variable ``TORCHTPU_CHIPS`` names a file of their own that is merged over it,
chip by chip and field by field. The local CPU (``"local"``) is not in the catalog; the
planner measures it.

    >>> from torchtpu.plan.catalog import chip
    >>> h100 = chip("h100")
    >>> h100.peak("bf16").value / 1e12
    989.0
    >>> h100.estimates()
    ['price_per_hour']
"""

from __future__ import annotations

import datetime
import difflib
import math
import os
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from torchtpu.errors import TorchTPUError

PACKAGED_CATALOG = Path(__file__).with_name("chips.toml")
ENV_VAR = "TORCHTPU_CHIPS"
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
TOPOLOGIES = ("switch", "mesh", "torus2d", "torus3d", "ring")
_DOCS = "docs/planner.md#the-chip-catalog"

# The units a figure may be written in, per dimension, as multiples of the base unit.
# Decimal keeps "3.35 TB/s" exactly 3.35e12 bytes/s.
_UNITS: dict[str, dict[str, Decimal]] = {
    "FLOP/s": {
        "FLOP/s": Decimal(1),
        "GFLOP/s": Decimal(10**9),
        "TFLOP/s": Decimal(10**12),
        "PFLOP/s": Decimal(10**15),
    },
    "bytes": {
        "B": Decimal(1),
        "MB": Decimal(10**6),
        "GB": Decimal(10**9),
        "TB": Decimal(10**12),
        "MiB": Decimal(2**20),
        "GiB": Decimal(2**30),
        "TiB": Decimal(2**40),
    },
    "bytes/s": {
        "B/s": Decimal(1),
        "MB/s": Decimal(10**6),
        "GB/s": Decimal(10**9),
        "TB/s": Decimal(10**12),
        "GiB/s": Decimal(2**30),
        "Gbit/s": Decimal(10**9) / 8,
    },
    "W": {"W": Decimal(1), "kW": Decimal(1000)},
    "USD/h": {"USD/h": Decimal(1)},
    "fraction": {"1": Decimal(1), "%": Decimal("0.01")},
}

# The figure fields of a chip other than peak_flops: dimension, and whether required.
_FIGURES: dict[str, tuple[str, bool]] = {
    "memory_bytes": ("bytes", True),
    "memory_bw": ("bytes/s", True),
    "link_bw": ("bytes/s", False),
    "tdp_w": ("W", False),
    "price_per_hour": ("USD/h", False),
    "matmul_efficiency": ("fraction", True),
    "conv_efficiency": ("fraction", False),
    "matvec_bw": ("bytes/s", False),
}
_CHIP_KEYS = ("name", "vendor", "domain", "topology", "peak_flops", *_FIGURES)
_REQUIRED = ("name", "vendor", "domain", "topology", "peak_flops") + tuple(
    name for name, (_, required) in _FIGURES.items() if required
)
_FIGURE_KEYS = ("value", "unit", "source", "date", "verified")
_SOURCE_KEYS = ("title", "url")
_KEY = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_DATE = re.compile(r"\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?\Z")

# Spellings of a dtype that peak() accepts, beyond the catalog's own keys.
_DTYPE_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
    "float8_e5m2": "fp8",
}
# Dtypes whose dense matmul rate stands in for one another when a chip lists only one.
_TWINS = {"fp16": "bf16", "bf16": "fp16"}


class CatalogError(TorchTPUError, ValueError):
    """A chip catalog file is malformed: the message names the file, the chip and the field."""


class CatalogKeyError(TorchTPUError, KeyError):
    """A chip or dtype is not in the catalog; the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0])


@dataclass(frozen=True)
class Figure:
    """One catalog figure in base units (FLOP/s, bytes, bytes/s, W, USD per chip-hour, or a
    fraction), with where it comes from. ``verified=False`` makes it an estimate."""

    value: float
    source: str  # a URL or a key of the catalog's [sources] table
    date: str  # "YYYY-MM" or "YYYY-MM-DD": when the figure was published or checked
    verified: bool


@dataclass(frozen=True)
class Chip:
    """One accelerator: its figures and the shape of its scale-up domain.

    ``link_bw`` is the chip's scale-up bandwidth in one direction, summed over its links;
    on a ``"mesh"`` each of the ``domain - 1`` peers gets an equal share of it.

        >>> from torchtpu.plan.catalog import chip
        >>> v6e = chip("tpu-v6e")
        >>> v6e.memory_bw.value, v6e.domain, v6e.topology
        (1638000000000.0, 256, 'torus2d')
    """

    key: str
    name: str
    vendor: str
    peak_flops: dict[str, Figure]  # dtype -> dense FLOP/s
    memory_bytes: Figure
    memory_bw: Figure
    link_bw: Figure | None
    domain: int
    topology: str
    tdp_w: Figure | None
    price_per_hour: Figure | None
    price_provider: str | None
    matmul_efficiency: Figure
    # Rates of the op classes a program's HLO is split into (torchtpu/plan/hlo.py). The
    # catalog publishes neither: a convolution runs at matmul_efficiency (cuDNN, MIOpen and
    # the TPU MXU run convolutions as implicit matmuls) and a matrix-vector product streams
    # at memory_bw, both stated estimates (docs/planner.md). The local chip measures both.
    conv_efficiency: Figure | None = None
    matvec_bw: Figure | None = None

    def peak(self, dtype: str) -> Figure:
        """The dense peak for ``dtype`` ("bf16", "float16", "torch.float8_e4m3fn", ...).

        A chip that lists only one of fp16 and bf16 gives it for both. fp32 is never
        answered with tf32 or bf16: ask for the dtype the matmuls actually run in.

            >>> from torchtpu.plan.catalog import chip
            >>> chip("tpu-v5e").peak("fp16").value == chip("tpu-v5e").peak("bf16").value
            True
        """
        name = _dtype_key(dtype)
        if name in self.peak_flops:
            return self.peak_flops[name]
        twin = _TWINS.get(name)
        if twin in self.peak_flops:
            return self.peak_flops[twin]
        listed = ", ".join(d for d in DTYPES if d in self.peak_flops)
        hint = (
            " fp32 is not mapped to tf32 or bf16: ask for the dtype the matmuls run in."
            if name == "fp32"
            else ""
        )
        raise CatalogKeyError(
            f"{self.name} ({self.key!r}) has no dense {name} peak in the chip catalog; "
            f"it lists {listed}.{hint} Add peak_flops.{name} to the chip in a file named "
            f"by {ENV_VAR} if the vendor publishes one ({_DOCS})."
        )

    def estimates(self) -> list[str]:
        """The fields whose figures are not verified, e.g. ``["peak_flops.fp32",
        "price_per_hour"]``: results that use them are estimates."""
        names = [f"peak_flops.{d}" for d, fig in self.peak_flops.items() if not fig.verified]
        for name in _FIGURES:
            fig = getattr(self, name)
            if fig is not None and not fig.verified:
                names.append(name)
        return names


_FROM_ENV: Any = object()


def load_catalog(
    path: str | os.PathLike | None = None, overrides: str | os.PathLike | None = _FROM_ENV
) -> dict[str, Chip]:
    """Read the chip catalog: ``path`` (default: the packaged ``chips.toml``), with the file
    named by ``overrides`` (default: the ``TORCHTPU_CHIPS`` environment variable) merged
    over it. The override file may hold only the fields it changes; a chip it adds must be
    complete. A malformed file raises :class:`CatalogError` naming the file, chip and field.

        >>> from torchtpu.plan.catalog import load_catalog
        >>> catalog = load_catalog(overrides=None)
        >>> catalog["mi300x"].memory_bytes.value
        192000000000.0
    """
    return _load(path, overrides)[0]


def load_sources(
    path: str | os.PathLike | None = None, overrides: str | os.PathLike | None = _FROM_ENV
) -> dict[str, str]:
    """The catalog's [sources] table: key -> "title <url>", to cite a figure's source.

    >>> from torchtpu.plan.catalog import chip, load_sources
    >>> load_sources()[chip("h100").memory_bw.source].startswith("NVIDIA H100")
    True
    """
    return {
        key: f"{s['title']} <{s['url']}>" if "url" in s else s["title"]
        for key, s in _load(path, overrides)[1].items()
    }


def chip(key: str, catalog: dict[str, Chip] | None = None) -> Chip:
    """The chip called ``key`` in ``catalog`` (default: :func:`load_catalog`).

    >>> from torchtpu.plan.catalog import chip
    >>> chip("tpu-v5p").domain
    6144
    """
    catalog = load_catalog() if catalog is None else catalog
    if key in catalog:
        return catalog[key]
    if key == "local":
        raise CatalogKeyError(
            "'local' is not in the chip catalog: the planner measures the local CPU when it "
            f"runs. Known chips: {', '.join(catalog)}."
        )
    close = difflib.get_close_matches(key, list(catalog), n=1)
    guess = f" Did you mean {close[0]!r}?" if close else ""
    raise CatalogKeyError(
        f"no chip {key!r} in the chip catalog.{guess} Known chips: {', '.join(catalog)}; "
        f"'local' is the measured CPU. Add a chip in a file named by {ENV_VAR} ({_DOCS})."
    )


def catalog_table(catalog: dict[str, Chip] | None = None) -> str:
    """The catalog as a markdown table, one row per chip; ``*`` marks an estimate.

    >>> from torchtpu.plan.catalog import catalog_table
    >>> print(catalog_table().splitlines()[0])  # doctest: +ELLIPSIS
    | key | chip | bf16 TFLOP/s | ...
    """
    catalog = load_catalog() if catalog is None else catalog
    head = (
        "| key | chip | bf16 TFLOP/s | fp8 TFLOP/s | memory GB | memory TB/s "
        "| link GB/s (one way) | domain | TDP W | $/chip-h | matmul eff. |"
    )
    rows = [head, "|" + "---|" * 11]
    for c in catalog.values():
        fp8 = c.peak_flops.get("fp8")
        price = _cell(c.price_per_hour, 1, "{:.2f}")
        if c.price_per_hour is not None:
            price += f" ({c.price_provider})"
        cells = [
            f"`{c.key}`",
            c.name,
            _cell(c.peak("bf16"), 1e12),
            _cell(fp8, 1e12),
            _cell(c.memory_bytes, 1e9, "{:.0f}"),
            _cell(c.memory_bw, 1e12, "{:.3g}"),
            _cell(c.link_bw, 1e9),
            f"{c.domain} {c.topology}",
            _cell(c.tdp_w, 1),
            price,
            _cell(c.matmul_efficiency, 1, "{:.2f}"),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(fig: Figure | None, scale: float, fmt: str = "{:g}") -> str:
    if fig is None:
        return "—"
    return fmt.format(fig.value / scale) + ("" if fig.verified else "*")


def _dtype_key(dtype: object) -> str:
    name = str(dtype).removeprefix("torch.").lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPES:
        raise CatalogKeyError(
            f"unknown dtype {dtype!r} for a chip's peak: use one of {', '.join(DTYPES)}."
        )
    return name


def _load(path, overrides) -> tuple[dict[str, Chip], dict[str, dict[str, str]]]:
    base = Path(path) if path is not None else PACKAGED_CATALOG
    layers = [(base, str(base))]
    if overrides is _FROM_ENV:
        user = os.environ.get(ENV_VAR)
        if user:
            layers.append((Path(user), f"{user} (named by {ENV_VAR})"))
    elif overrides is not None:
        layers.append((Path(overrides), str(overrides)))
    docs = [(label, _read(p, label)) for p, label in layers]

    # Sources first, from every file: an override's figure may cite a packaged source.
    sources: dict[str, dict[str, str]] = {}
    for label, doc in docs:
        sources.update(_sources(label, doc.get("sources", {})))

    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, list[str]] = {}
    for label, doc in docs:
        table = doc.get("chips", {})
        if not isinstance(table, dict):
            raise _error(label, "[chips] must be a table of [chips.<key>] tables")
        for key, raw in table.items():
            parsed = _chip_fields(label, key, raw, sources)
            entry = merged.setdefault(key, {})
            for name, value in parsed.items():
                if name == "peak_flops" and name in entry:
                    entry[name] = {**entry[name], **value}
                else:
                    entry[name] = value
            origin.setdefault(key, []).append(label)
    return {key: _chip(key, entry, origin[key]) for key, entry in merged.items()}, sources


def _read(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the chip catalog {label}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{label} is not valid TOML: {exc} ({_DOCS})") from None
    unknown = [k for k in doc if k not in ("sources", "chips")]
    if unknown:
        raise _error(
            label,
            f"unknown top-level table {unknown[0]!r}; a catalog holds only "
            "[sources] and [chips.<key>] tables",
        )
    return doc


def _sources(label: str, table: Any) -> dict[str, dict[str, str]]:
    if not isinstance(table, dict):
        raise _error(label, "[sources] must be a table of key = { title = ..., url = ... }")
    out = {}
    for key, raw in table.items():
        where = f"[sources] {key}"
        if not isinstance(raw, dict) or not isinstance(raw.get("title"), str):
            raise _error(label, f'{where} must be {{ title = "...", url = "..." }}')
        _no_unknown(label, where, raw, _SOURCE_KEYS)
        if "url" in raw and not isinstance(raw["url"], str):
            raise _error(label, f"{where}: url must be a string")
        out[key] = dict(raw)
    return out


def _chip_fields(label: str, key: str, raw: Any, sources: dict) -> dict[str, Any]:
    where = f"[chips.{key}]"
    if key == "local":
        raise _error(
            label,
            f"{where}: 'local' is measured when the planner runs and cannot "
            "be set in a catalog; give the machine another key",
        )
    if not _KEY.match(key):
        raise _error(label, f"{where}: a chip key is lower-case letters, digits, '-', '.', '_'")
    if not isinstance(raw, dict):
        raise _error(label, f"{where} must be a table of fields")
    _no_unknown(label, where, raw, _CHIP_KEYS)
    out: dict[str, Any] = {}
    for name, value in raw.items():
        at = f"{where} {name}"
        if name in ("name", "vendor"):
            if not isinstance(value, str) or not value:
                raise _error(label, f"{at} must be a non-empty string")
            out[name] = value
        elif name == "domain":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _error(label, f"{at} must be a whole number of chips, at least 1")
            out[name] = value
        elif name == "topology":
            if value not in TOPOLOGIES:
                raise _error(label, f"{at} is {value!r}; use one of {', '.join(TOPOLOGIES)}")
            out[name] = value
        elif name == "peak_flops":
            if not isinstance(value, dict) or not value:
                raise _error(label, f"{at} must be a table of dtype = {{ ... }} figures")
            _no_unknown(label, at, value, DTYPES)
            out[name] = {
                d: _figure(label, f"{at}.{d}", fig, "FLOP/s", sources) for d, fig in value.items()
            }
        elif name == "price_per_hour":
            out[name] = _figure(label, at, value, "USD/h", sources, provider=True)
            out["price_provider"] = value["provider"]
        else:
            out[name] = _figure(label, at, value, _FIGURES[name][0], sources)
    return out


def _figure(
    label: str, at: str, raw: Any, dimension: str, sources: dict, provider: bool = False
) -> Figure:
    units = _UNITS[dimension]
    example = f'{{ value = ..., unit = "{next(iter(units))}", source = "...", date = "YYYY-MM" }}'
    if not isinstance(raw, dict):
        raise _error(label, f"{at} must be a figure like {example}")
    _no_unknown(label, at, raw, _FIGURE_KEYS + (("provider",) if provider else ()))
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _error(label, f"{at}: value must be a number, got {value!r}")
    if value <= 0:
        raise _error(label, f"{at}: value must be positive, got {value!r}")
    unit = raw.get("unit", "1" if dimension == "fraction" else None)
    if unit not in units:
        got = "no unit" if unit is None else f"unit {unit!r}"
        raise _error(label, f"{at} has {got}; use one of {', '.join(units)}")
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise _error(label, f"{at} has no source: give a URL or a key of [sources]")
    if not source.startswith(("http://", "https://")) and source not in sources:
        raise _error(label, f"{at}: source {source!r} is neither a URL nor a key of [sources]")
    date = raw.get("date")
    if isinstance(date, datetime.date):  # an unquoted TOML date
        date = date.isoformat()
    if not isinstance(date, str) or not _DATE.match(date):
        raise _error(label, f'{at}: date must be "YYYY-MM" or "YYYY-MM-DD", got {date!r}')
    verified = raw.get("verified", False)
    if not isinstance(verified, bool):
        raise _error(label, f"{at}: verified must be true or false, got {verified!r}")
    if provider and (not isinstance(raw.get("provider"), str) or not raw["provider"]):
        raise _error(label, f"{at} has no provider: say who charges this price")
    base = float(Decimal(str(value)) * units[unit])
    if dimension == "fraction" and base > 1:
        raise _error(label, f"{at}: a fraction of peak is at most 1, got {base:g}")
    return Figure(value=base, source=source, date=date, verified=verified)


def _chip(key: str, entry: dict[str, Any], files: list[str]) -> Chip:
    missing = [name for name in _REQUIRED if name not in entry]
    if missing:
        raise CatalogError(
            f"[chips.{key}] in {' + '.join(files)} has no {', '.join(missing)}: a chip new to "
            f"the catalog needs every one of {', '.join(_REQUIRED)} ({_DOCS})"
        )
    values = {f.name: entry.get(f.name) for f in fields(Chip) if f.name != "key"}
    return Chip(key=key, **values)


def _no_unknown(label: str, at: str, raw: dict, known: tuple[str, ...]) -> None:
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise _error(label, f"{at}: unknown field {name!r}; {guess}known: {', '.join(known)}")


def _error(label: str, message: str) -> CatalogError:
    return CatalogError(f"{label}: {message} ({_DOCS})")
