"""The fixed kernels and the signatures the engine calls them with, declared once.

``rsgrpc warm`` runs every case below so that numba compiles each fixed kernel (``cache=True``)
into its disk cache; a worker then loads them instead of compiling on a request. A case calls a
public function on a small tile exactly as the engine does (C-contiguous tiles of one dtype,
the same options), so it compiles the signatures a job needs and no other. A band-calc
expression runs as a block program (``block_program``): its fixed kernel is cached for every
output dtype, so a new expression compiles nothing; the fused kernel that ``bandcalc`` can build
for one expression is not cached, but the fixed operations it calls are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Final

import numpy as np
from numba.core.dispatcher import Dispatcher

from . import (
    bandcalc,
    block_program,
    clustering,
    focal,
    label,
    morphology,
    reclassify,
    row_statistics,
    scalar_ops,
    sieve,
)
from .expression import Expression, parse_expression
from .numba_cache import load_without_compiling

# Every dtype a band of a morphology job can have (GDAL's integer and float types).
MORPHOLOGY_DTYPES: Final = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "int64",
    "uint64",
    "float32",
    "float64",
)
# An expression that calls every scalar operation and every aggregation once.
_EVERY_OPERATION: Final = (
    "sqrt(abs(a)) + log(abs(a) + 1) + log10(abs(b) + 1) + exp(a / 1000) + sin(a) + cos(b)"
    " + tan(a) + arcsin(a / 1000) + arccos(b / 1000) + arctan(a) + a // (b + 1) + a % (b + 1)"
    " + a ** 2 + min(a, b) + max(a, b) + sum(a, b) + mean(a, b) + median(a, b) + std(a, b)"
    " + percentile(a, b, 90)"
)
_TILE: Final = 8  # a warm tile's side: values matter to the kernels' types, not its size


@dataclass(frozen=True)
class WarmCase:
    """One call of a tool's kernels with one signature: ``run()`` compiles or loads them."""

    tool: str  # sieve, dilation, erosion, grey, focal, band-calc
    dtype: str
    options: str  # what else selects a signature, as text
    run: Callable[[], np.ndarray]

    @property
    def name(self) -> str:
        return f"{self.tool} {self.dtype} {self.options}".rstrip()


def warm_cases(*tools: str) -> tuple[WarmCase, ...]:
    """Every fixed kernel with every signature the engine uses, tool by tool: the cases
    whose tool is in ``tools`` (names of `WARM_CASES`, as the server's tools declare the
    kernels they call), by default all."""
    unknown = sorted(set(tools) - set(WARM_CASES))
    if unknown:
        raise ValueError(f"no warm cases for {unknown}; known: {sorted(WARM_CASES)}")
    makers = dict.fromkeys(WARM_CASES.values())  # each once, in order
    return tuple(c for make in makers for c in make() if not tools or c.tool in tools)


def fixed_kernels(*modules: ModuleType) -> dict[str, Dispatcher]:
    """The numba functions the cases compile, by module and name (``sieve._label``), of
    ``modules`` (by default, every kernel module)."""
    found = {}
    every = (
        sieve,
        label,
        morphology,
        focal,
        reclassify,
        bandcalc,
        block_program,
        scalar_ops,
        row_statistics,
        clustering,
    )
    for module in modules or every:
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher):
                found[f"{module.__name__.rsplit('.', 1)[-1]}.{name}"] = value
    return found


def load_cached_kernels(*modules: ModuleType) -> int:
    """Load into this process, without compiling anything, every signature of every fixed
    kernel (of ``modules``, by default all) that the disk cache holds for this machine and
    these sources; returns how many.

    A worker calls it as it starts, so that a tool's first call finds its kernels loaded
    (loading them all takes about 2 s on a 2-core machine). A cache that is empty or stale
    loads nothing here, and the kernels compile on first use.
    """
    loaded = 0
    for dispatcher in fixed_kernels(*modules).values():
        cache = dispatcher._cache  # numba's disk cache of a `cache=True` function
        magic = dispatcher.targetctx.codegen().magic_tuple()
        # numba keys a saved overload by (signature, machine, code hashes); its index file is
        # read as numba reads it, and is empty when the function's source changed.
        for key in cache._cache_file._load_index():
            signature = key[0]  # a tuple of argument types, or a Signature
            arguments = tuple(getattr(signature, "args", signature))
            if key[1] != magic or arguments in dispatcher.overloads:
                continue
            loaded += load_without_compiling(dispatcher, signature)
    return loaded


def _classes(dtype: str) -> np.ndarray:
    """A small tile of a few classes with small regions, so that every phase has work."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 4, (_TILE, _TILE)).astype(dtype)


def _sieve_cases() -> Iterator[WarmCase]:
    # Connectivity and the mask's presence select no new signature; both are run, so that the
    # cache holds whatever each path compiles.
    for dtype in sorted(d.name for d in sieve.SIEVE_DTYPES):
        for connectivity in sorted(sieve.SIEVE_CONNECTIVITIES):
            for masked in (False, True):
                yield WarmCase(
                    "sieve",
                    dtype,
                    f"connectivity {connectivity}{' masked' if masked else ''}",
                    lambda d=dtype, c=connectivity, m=masked: _sieve_in_tiles(d, c, m),
                )


def _sieve_in_tiles(dtype: str, connectivity: int, masked: bool) -> np.ndarray:
    """The three phases on four tiles, as the engine runs them (each tile its own array)."""
    array = _classes(dtype)
    half = _TILE // 2
    corners = [(r, c) for r in (0, half) for c in (0, half)]
    settled = []
    for r, c in corners:
        tile = np.ascontiguousarray(array[r : r + half, c : c + half])
        mask = tile != 3 if masked else None
        placement = sieve.TilePlacement(r, c, _TILE, _TILE)
        settled.append(
            sieve.settle_tile(tile, placement, size=3, connectivity=connectivity, mask=mask)
        )
    decision = sieve.decide_tiles([t.summary for t in settled], size=3, connectivity=connectivity)
    out = np.empty_like(array)
    for (r, c), tile, tile_decision in zip(corners, settled, decision.tiles, strict=True):
        sieve.finish_tile(tile.out, tile.pending, tile_decision)
        out[r : r + half, c : c + half] = tile.out
    return out


def _morphology_cases() -> Iterator[WarmCase]:
    interior = (slice(2, _TILE - 2), slice(2, _TILE - 2))
    for dtype in MORPHOLOGY_DTYPES:
        for circular in (False, True):
            shape = "circular" if circular else "square"
            for nodata in (None, 3):
                options = f"{shape} nodata {nodata}"
                common = {"size": 2, "circular": circular, "nodata": nodata, "interior": interior}
                # More than 254 listed values take wider ranks (see morphology.dilate).
                for listed in ([1, 2], list(range(300))):
                    yield WarmCase(
                        "dilation",
                        dtype,
                        f"{options} {len(listed)} values",
                        lambda d=dtype, v=listed, k=common: morphology.dilate(
                            _classes(d), value_list=v, **k
                        ),
                    )
                yield WarmCase(
                    "erosion",
                    dtype,
                    options,
                    lambda d=dtype, k=common: morphology.erode(_classes(d), value_list=[1], **k),
                )
                for operation in sorted(morphology.OPERATIONS):
                    yield WarmCase(
                        "grey",
                        dtype,
                        f"{operation} {options}",
                        lambda d=dtype, o=operation, k=common: morphology.grey_filter(
                            _classes(d), operation=o, **k
                        ),
                    )


def _focal_cases() -> Iterator[WarmCase]:
    # The square and the disk (Max and Min of both run morphology's grey filter), and a
    # structure of neither shape; a signature per input dtype, and one per output dtype.
    interior = (slice(2, _TILE - 2), slice(2, _TILE - 2))
    structures = {
        "square": focal.focal_structure(2, circular=False),
        "circular": focal.focal_structure(2),
        "structure": np.array([[1, 0, 1], [1, 1, 0]], dtype=bool),
    }
    for dtype in focal.FOCAL_DTYPES:
        for statistic in focal.STATISTICS:
            percentile = 90 if statistic == "Percentile" else None
            for shape, structure in structures.items():
                yield WarmCase(
                    "focal",
                    dtype,
                    f"{statistic} {shape}",
                    lambda d=dtype, s=statistic, p=percentile, f=structure: focal.focal_statistic(
                        _classes(d),
                        statistic=s,
                        structure=f,
                        percentile=p,
                        nodata=3,
                        interior=interior,
                    ),
                )
    for out_dtype in focal.FOCAL_DTYPES:
        yield WarmCase(
            "focal",
            "uint8",
            f"Mean circular into {out_dtype}",
            lambda o=out_dtype: focal.focal_statistic(
                _classes("uint8"),
                statistic="Mean",
                structure=structures["circular"],
                nodata=3,
                out_dtype=o,
                out_nodata=0,
            ),
        )


def _reclassify_cases() -> Iterator[WarmCase]:
    # One signature per input dtype; a condition runs its block program into uint8.
    rules = ((1, 7), ("(raster >= 2) & (raster < 3)", 5), (None, 6))
    for dtype in reclassify.RECLASSIFY_DTYPES:
        yield WarmCase(
            "reclassify",
            dtype,
            "values, a condition and nodata",
            lambda d=dtype: reclassify.reclassify(_classes(d), rules, nodata=3),
        )


def _label_cases() -> Iterator[WarmCase]:
    # The tile's labels and first pixels, in two tiles so that seams are merged.
    for connectivity in sorted(label.LABEL_CONNECTIVITIES):
        yield WarmCase(
            "label",
            "uint8",
            f"{connectivity}-connected, in tiles",
            lambda c=connectivity: _label_in_tiles(c),
        )


def _label_in_tiles(connectivity: int) -> np.ndarray:
    classes = _classes("uint8")
    half = _TILE // 2
    tiles = [
        label.label_tile(
            classes[:, c : c + half],
            sieve.TilePlacement(0, c, _TILE, _TILE),
            connectivity=connectivity,
            mask=classes[:, c : c + half] != 3,
        )
        for c in (0, half)
    ]
    numbering, _ = label.number_tiles([t.summary for t in tiles], connectivity=connectivity)
    pairs = zip(tiles, numbering, strict=True)
    return np.hstack([label.numbered_tile(t.labels, n.values) for t, n in pairs])


def _clustering_cases() -> Iterator[WarmCase]:
    # Pixels of any band type reach the kernels as one float64 matrix.
    for method in ("minimum distance", "spectral angle", "isodata"):
        yield WarmCase("clustering", "float64", method, lambda m=method: _clustering(m))


def _clustering(method: str) -> np.ndarray:
    band = _classes("uint16")
    values, _ = clustering.pixel_matrix([band, band[::-1]], [3, None], None)
    centres = values[:2] + 0.5
    if method == "isodata":
        counts, _, _ = clustering.cluster_spread_sums(values, centres)
        return counts
    angle = method == "spectral angle"
    counts, _, _ = clustering.cluster_sums(values, centres, angle)
    return counts + clustering.nearest_centres(values, centres, angle)[:2]


def _band_calc_cases() -> Iterator[WarmCase]:
    expression = parse_expression(_EVERY_OPERATION, ["a", "b"])
    for dtype in sorted(d.name for d in bandcalc.OUTPUT_DTYPES):
        for method in ("program", "fused"):
            yield WarmCase(
                "band-calc",
                dtype,
                f"every operation, {method}",
                lambda d=dtype, m=method: _band_calc(expression, d, m),
            )


def _band_calc(expression: Expression, dtype: str, method: str) -> np.ndarray:
    """Inputs of every dtype take one path of the program's kernel each (no new signature)."""
    a = np.arange(_TILE * _TILE, dtype=np.float32).reshape(_TILE, _TILE)
    out = np.empty(a.shape, dtype=dtype)
    for input_dtype in block_program.INPUT_DTYPE_CODES:
        tiles = [a.astype(input_dtype), a[::-1].astype(input_dtype)]
        bandcalc.evaluate(
            expression,
            tiles,
            [None, 3],
            output_dtype=dtype,
            output_nodata=0,
            out=out,
            method=method,
        )
    return out


# Who makes each tool's cases: the names the tools' declarations give the kernels they
# call (``rsgrpc.tools``), and band calc's and the sieve's.
WARM_CASES: Final[dict[str, Callable[[], Iterator[WarmCase]]]] = {
    "sieve": _sieve_cases,
    "dilation": _morphology_cases,
    "erosion": _morphology_cases,
    "grey": _morphology_cases,
    "focal": _focal_cases,
    "reclassify": _reclassify_cases,
    "label": _label_cases,
    "band-calc": _band_calc_cases,
    "clustering": _clustering_cases,
}
