"""Remotior's band set language in band calc, expanded as text before the expression is
checked: band set references, spectral and expression aliases, the bands of
`input_bandset` (or of a band set given inline), iterations and the placeholders of output
names.

The expansion reads one snapshot of the session's catalog and writes every band it names
as the quoted name of a `NamedInput` (the band's file and band number), always
``"bandset{n}b{m}"``, or ``"b{m}"`` for a band of the band set given inline. That band set
(Remotior's `input_bands` given a BandSet object) is read in the place of the numbered ones
that ``#``, ``b1`` and the aliases name, and is never in the catalog. The text it returns
is then checked like any client expression (`prepare_band_calc_script`, the allow-list
parser): nothing here evaluates anything. Errors name the line and column of the client's
own text: the expanded text keeps a map back to it (`ExpandedBandCalc.translate`).

Where Remotior is loose this is strict: a band set, band or alias that does not exist is
an error rather than a calculation dropped or an expression left unexpanded.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import logging
import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from rsgrpc_kernels.expression import AGGREGATIONS, MAX_ARGUMENTS, MAX_TEXT_LENGTH

from rsgrpc.engine.band_calc import MAX_INPUTS, BandCalcRequest, BandCalcResult, NamedInput
from rsgrpc.engine.band_calc_script import (
    MAX_SCRIPT_LENGTH,
    MAX_STATEMENTS,
    Statement,
    error_at,
    script_error,
    split_script,
)
from rsgrpc.engine.bandsets import (
    MICROMETRES,
    NANOMETRES,
    BandSet,
    BandSetCatalog,
    BandSpec,
    build_bands,
    check_band_count,
)
from rsgrpc.engine.errors import InvalidArgumentError, RsgrpcError
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import check_same_grid, describe

# Remotior's spectral ranges (its configurations): the band nearest the center whose
# distance from it is less than the threshold, in micrometres.
SPECTRAL_RANGES: Final = {
    "BLUE": (0.475, 0.2),
    "GREEN": (0.56, 0.03),
    "RED": (0.65, 0.04),
    "NIR": (0.85, 0.15),
    "SWIR1": (1.61, 0.2),
    "SWIR2": (2.2, 0.2),
}
# Remotior's expression aliases; each expands in brackets, as one operand.
EXPRESSION_ALIASES: Final = {
    "NDVI": '("#NIR#" - "#RED#") / ("#NIR#" + "#RED#")',
    "EVI": '2.5 * ("#NIR#" - "#RED#") / ("#NIR#" + 6 * "#RED#" - 7.5 * "#BLUE#" + 1)',
}
_UNIT_SCALE: Final = {MICROMETRES: 1.0, NANOMETRES: 1000.0}
# The number the band set given inline goes by here: no text of the client can write it.
INLINE: Final = -1
_DATE_FORMAT: Final = "%Y%m%d_%H%M%S%f"  # Remotior's #DATE#: the time of the calculation

_QUOTED = re.compile(r"\"([^\"\n]*)\"|'([^'\n]*)'")
_ALIAS = re.compile(r"#([^#\"']+)#")
_REFERENCE = re.compile(r"bandset(?P<set>\d+|#|\*|\{(?P<list>[^{}]*)\})b(?P<band>\d+|\*)")
_LOOKS_LIKE_REFERENCE = re.compile(r"bandset[\d#*{]")
_OWN_BAND = re.compile(r"b(\d+|\*)")
_HEADER = re.compile(
    r"\s*(?P<kind>forbandsets|forbandsinbandset)\s*\[(?P<args>[^\]]*)\](?P<filter>[^\n]*)",
    re.IGNORECASE,
)
_ITERATION = re.compile(r"\s*(forbandsets|forbandsinbandset)\b", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BANDSET_PLACEHOLDER = re.compile(r"#BANDSET#", re.IGNORECASE)
_DATE_PLACEHOLDER = re.compile(r"#DATE#", re.IGNORECASE)
_BAND_PLACEHOLDER = re.compile(r"#BAND#", re.IGNORECASE)
_SCRIPT_MESSAGE = re.compile(r"expression line \d+, column \d+: (?P<rest>.*)", re.DOTALL)
_SINGLE_MESSAGE = re.compile(
    r"expression: (?P<rest>.*) \(at line \d+, column \d+, offset \d+\)", re.DOTALL
)
_OF_LINE = re.compile(r"\b(of line) (\d+)\b")
_LINE_MESSAGE = re.compile(r"line (?P<line>\d+)(?P<rest>[: ].*)", re.DOTALL)


@dataclass(frozen=True)
class BandSetAddition:
    """Remotior's ``@ name%n``: the output of calculation `statement` (from 1) joins band
    set `bandset` once the script has run."""

    statement: int
    bandset: int


@dataclass(frozen=True)
class _Piece:
    """A run of the expanded text: `start` in it; copied from `source_start` of the
    client's text (`verbatim`) or written for the client's text at `source_start`."""

    start: int
    source_start: int
    source_end: int
    verbatim: bool


@dataclass(frozen=True)
class ExpandedBandCalc:
    """A band calc request with its band set language expanded, and how to name the
    client's own text in errors about the expanded one."""

    request: BandCalcRequest
    source: str = ""
    pieces: tuple[_Piece, ...] = ()
    contexts: tuple[tuple[int, str], ...] = ()  # (start in the expanded text, what it is)
    additions: tuple[BandSetAddition, ...] = ()
    expanded: bool = False

    def source_offset(self, offset: int) -> int:
        """Where in the client's text the expanded text's `offset` comes from."""
        starts = [p.start for p in self.pieces]
        index = bisect.bisect_right(starts, offset) - 1
        if index < 0:
            return 0
        piece = self.pieces[index]
        if not piece.verbatim:
            return piece.source_start
        return min(piece.source_start + offset - piece.start, piece.source_end)

    def _context(self, offset: int) -> str:
        starts = [start for start, _ in self.contexts]
        index = bisect.bisect_right(starts, offset) - 1
        return f" ({self.contexts[index][1]})" if index >= 0 else ""

    def _line_start(self, line: int) -> int:
        text = self.request.expression
        offset = 0
        for _ in range(line - 1):
            offset = text.find("\n", offset) + 1
            if offset == 0:
                return len(text)
        return offset

    def source_line(self, line: int) -> int:
        """The line of the client's text that the expanded text's `line` comes from."""
        if not self.expanded:
            return line
        return _position(self.source, self.source_offset(self._line_start(line)))[0]

    def translate(self, error: RsgrpcError) -> RsgrpcError:
        """`error`, about the expanded text, as it reads about the client's text."""
        if not self.expanded:
            return error
        metadata = dict(error.metadata)
        # "the output of line 2": a line of the expanded text, named as the client wrote it
        message = _OF_LINE.sub(
            lambda m: f"{m.group(1)} {self.source_line(int(m.group(2)))}", error.message
        )
        position = metadata.get("position", "")
        if position.isdigit():
            offset = int(position)
            source = self.source_offset(offset)
            line, column = _position(self.source, source)
            context = self._context(offset)
            script = _SCRIPT_MESSAGE.fullmatch(message)
            if script is not None:
                translated = script_error(line, column, script.group("rest") + context, source)
                translated.metadata = {**metadata, **translated.metadata}
                return translated
            single = _SINGLE_MESSAGE.fullmatch(message)
            if single is not None:
                message = (
                    f"expression: {single.group('rest')}{context} "
                    f"(at line {line}, column {column}, offset {source})"
                )
            else:
                message += context
            metadata.update(line=str(line), column=str(column), position=str(source))
            return type(error)(message, metadata=metadata)
        by_line = _LINE_MESSAGE.match(message)
        if by_line is not None:
            offset = self._line_start(int(by_line.group("line")))
            line, _ = _position(self.source, self.source_offset(offset))
            message = f"line {line}{self._context(offset)}{by_line.group('rest')}"
            return type(error)(message, metadata=metadata)
        return error

    @contextlib.contextmanager
    def errors_in_source(self) -> Iterator[None]:
        """Errors raised within name the client's text rather than the expanded one."""
        try:
            yield
        except RsgrpcError as error:
            translated = self.translate(error)
            if translated is error:
                raise
            raise translated from None


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


@dataclass(frozen=True)
class _Target:
    """What one expanded calculation reads: band set `number` (that `#` names and whose
    wavelengths the spectral aliases read), and in a forbandsinbandset line its `band`."""

    number: int
    band: int | None = None


@dataclass
class _Builder:
    """The expanded text, piece by piece, with where each piece comes from."""

    source: str
    parts: list[str] = field(default_factory=list)
    pieces: list[_Piece] = field(default_factory=list)
    length: int = 0

    def copy(self, start: int, end: int) -> None:
        if end > start:
            self.pieces.append(_Piece(self.length, start, end, True))
            self.parts.append(self.source[start:end])
            self.length += end - start

    def write(self, text: str, at: int) -> None:
        if text:
            self.pieces.append(_Piece(self.length, at, at, False))
            self.parts.append(text)
            self.length += len(text)

    def span(self, start: int, end: int, replacements: Sequence[tuple[int, int, str]]) -> None:
        """The client's text from `start` to `end`, with `replacements` (start, end, text)."""
        position = start
        for at, until, text in sorted(replacements):
            self.copy(position, at)
            self.write(text, at)
            position = until
        self.copy(position, end)

    def text(self) -> str:
        return "".join(self.parts)


class _Expander:
    """One request's expansion against one snapshot of the catalog, and the band set given
    inline, if any, in the place of `input_bandset` and `bandset_number`."""

    def __init__(
        self,
        text: str,
        request: BandCalcRequest,
        catalog: BandSetCatalog,
        bandset_number: int,
        input_bandset: int,
        inline: BandSet | None,
        now: datetime.datetime,
    ) -> None:
        self.text = text
        self.client_names = frozenset(i.name for i in request.inputs)
        self.inputs: dict[str, NamedInput] = {i.name: i for i in request.inputs}
        bandsets, current = catalog.list()
        self.bandsets: tuple[BandSet, ...] = tuple(bandsets)
        for value, field_name in (
            (bandset_number, "bandset_number"),
            (input_bandset, "input_bandset"),
        ):
            if inline is not None and value:
                raise InvalidArgumentError(
                    f"{field_name} is {value}: with inline_bandset, the band set it would "
                    "name, leave it at 0",
                    metadata={"field": field_name},
                )
            if value < 0 or value > len(self.bandsets):
                raise InvalidArgumentError(
                    f"{field_name} {value} is not a band set of the session's catalog, which "
                    f"holds {len(self.bandsets)} (0: "
                    + ("the current one)" if field_name == "bandset_number" else "none)"),
                    metadata={"field": field_name},
                )
        self.inline = inline
        self.default = INLINE if inline is not None else bandset_number or current
        self.own = INLINE if inline is not None else input_bandset
        self.now = now
        self.dates = 0

    def fail(self, at: int, message: str) -> InvalidArgumentError:
        return error_at(self.text, at, message)

    # band sets and bands

    @staticmethod
    def label(number: int) -> str:
        return "the inline band set" if number == INLINE else f"band set {number}"

    def bandset(self, number: int, at: int) -> BandSet:
        if number == INLINE and self.inline is not None:
            return self.inline
        if not 1 <= number <= len(self.bandsets):
            raise self.fail(
                at,
                f"band set {number} does not exist: the session's catalog holds "
                f"{len(self.bandsets)} band set(s)",
            )
        return self.bandsets[number - 1]

    def band_name(self, number: int, band: int, at: int) -> str:
        """The input name of band `band` of band set `number`, made an input if new: the
        inline band set's bands are named as the client writes them, ``b1``."""
        bandset = self.bandset(number, at)
        if not 1 <= band <= len(bandset.bands):
            raise self.fail(
                at,
                f"{self.label(number)} has {len(bandset.bands)} band(s): there is no band {band}",
            )
        name = f"b{band}" if number == INLINE else f"bandset{number}b{band}"
        if name in self.client_names:
            raise self.fail(
                at,
                f'input "{name}" has the name of band {band} of {self.label(number)}: rename '
                "the input",
            )
        if name not in self.inputs:
            if len(self.inputs) >= MAX_INPUTS:
                raise self.fail(
                    at,
                    f"band calc reads at most {MAX_INPUTS} inputs and band set bands in one "
                    f"request; band {band} of {self.label(number)} would be one more",
                )
            chosen = bandset.bands[band - 1]
            self.inputs[name] = NamedInput(name, chosen.data_path, chosen.raster_band)
        return name

    def spectral_band(self, alias: str, number: int, at: int) -> int:
        """Remotior's band for a spectral alias: the nearest to the range's center, if
        nearer than its threshold, in the unit of the band set's first band."""
        bandset = self.bandset(number, at)
        if not bandset.bands:
            raise self.fail(at, f'"#{alias}#" reads {self.label(number)}, which has no bands')
        unit = bandset.bands[0].wavelength_unit
        scale = _UNIT_SCALE.get(unit)
        if scale is None:
            raise self.fail(
                at,
                f'"#{alias}#" needs the center wavelengths of {self.label(number)}, whose '
                f"bands are in {unit!r}: give their wavelengths in µm or nm, or a sensor",
            )
        center, threshold = SPECTRAL_RANGES[alias]
        distances = [abs(b.wavelength - center * scale) for b in bandset.bands]
        best = min(range(len(distances)), key=distances.__getitem__)
        if not distances[best] < threshold * scale:
            shown = "µm" if scale == 1.0 else "nm"
            raise self.fail(
                at,
                f'"#{alias}#" has no band in {self.label(number)}: it reads the band nearest '
                f"{center * scale:g} {shown}, less than {threshold * scale:g} {shown} "
                f"from it, and the nearest is at {bandset.bands[best].wavelength:g} {shown}",
            )
        return best + 1

    # the text of a calculation

    def alias(self, name: str, target: _Target, at: int, within: str = "") -> str:
        number = self.own or target.number
        if name in SPECTRAL_RANGES:
            try:
                band = self.spectral_band(name, number, at)
            except InvalidArgumentError as error:
                if within:
                    raise self.fail(
                        at, f'"#{within}#" reads "#{name}#": {_reason(error)}'
                    ) from None
                raise
            return f'"{self.band_name(number, band, at)}"'
        if name in EXPRESSION_ALIASES:
            expanded = _ALIAS.sub(
                lambda m: self.alias(m.group(1), target, at, name),
                EXPRESSION_ALIASES[name].replace('"', ""),
            )
            return f"({expanded})"
        known = ", ".join(f'"#{a}#"' for a in (*SPECTRAL_RANGES, *EXPRESSION_ALIASES))
        raise self.fail(at, f'unknown alias "#{name}#"; the aliases are {known}')

    def quoted(self, content: str, start: int, end: int, target: _Target) -> str | None:
        """The text for a quoted name at `start`:`end`, or None to keep it."""
        if content in self.client_names:
            return None
        name = content
        if _BAND_PLACEHOLDER.search(name):
            if target.band is None:
                raise self.fail(
                    start,
                    "#BAND# is the band of a forbandsinbandset iteration: this script has none",
                )
            name = _BAND_PLACEHOLDER.sub(f"bandset{target.number}b{target.band}", name)
        if _BANDSET_PLACEHOLDER.search(name):
            display = self.bandset(self.own or target.number, start).display_name
            name = _BANDSET_PLACEHOLDER.sub(lambda _: display, name)
        alias = _ALIAS.fullmatch(name)
        if alias is not None:
            return self.alias(alias.group(1).upper(), target, start)
        reference = _REFERENCE.fullmatch(name)
        if reference is not None:
            return self.reference(reference, target, start, end, name)
        own = _OWN_BAND.fullmatch(name) if self.own else None
        if own is not None:
            if own.group(1) != "*":
                return f'"{self.band_name(self.own, int(own.group(1)), start)}"'
            count = len(self.bandset(self.own, start).bands)
            return self.band_list([(self.own, b) for b in range(1, count + 1)], name, start, end)
        if _LOOKS_LIKE_REFERENCE.match(name):
            raise self.fail(
                start,
                f'"{name[:80]}" is not a band set reference: write "bandset1b2", '
                '"bandset#b2", "bandset1b*", "bandset*b2" or "bandset{1:3}b2"',
            )
        return f'"{name}"' if name != content else None

    def reference(
        self, reference: re.Match[str], target: _Target, start: int, end: int, text: str
    ) -> str:
        which, band = reference.group("set"), reference.group("band")
        if which == "#" or which.isdigit():
            number = target.number if which == "#" else _number(which)
            if band != "*":
                return f'"{self.band_name(number, _number(band), start)}"'
            count = len(self.bandset(number, start).bands)
            return self.band_list([(number, b) for b in range(1, count + 1)], text, start, end)
        if which == "*":
            numbers = list(range(1, len(self.bandsets) + 1))
        else:
            numbers = self.bandset_numbers(reference.group("list"), start + 1 + 8)
        bands: list[tuple[int, int]] = []
        for number in numbers:
            count = len(self.bandset(number, start).bands)
            if band == "*":
                bands += [(number, b) for b in range(1, count + 1)]
            elif _number(band) <= count:  # band sets without that band are left out
                bands.append((number, _number(band)))
            if len(bands) > MAX_ARGUMENTS:
                break
        return self.band_list(bands, text, start, end)

    def band_list(self, bands: list[tuple[int, int]], text: str, start: int, end: int) -> str:
        """Several bands (band set, band), as arguments of the aggregation the reference is
        one of."""
        if not bands:
            raise self.fail(start, f'"{text}" names no band')
        if len(bands) > MAX_ARGUMENTS:
            raise self.fail(
                start,
                f'"{text}" names more than {MAX_ARGUMENTS} bands; an aggregation takes at '
                f"most {MAX_ARGUMENTS} values",
            )
        if not self.is_aggregation_argument(start, end):
            functions = ", ".join(sorted(AGGREGATIONS))
            raise self.fail(
                start,
                f'"{text}" is a list of bands: it is read only as an argument of '
                f'{functions}, e.g. max("{text}")',
            )
        return ", ".join(f'"{self.band_name(n, b, start)}"' for n, b in bands)

    def is_aggregation_argument(self, start: int, end: int) -> bool:
        text = self.text
        before, after = start - 1, end
        while before >= 0 and text[before].isspace():
            before -= 1
        while after < len(text) and text[after].isspace():
            after += 1
        if before < 0 or text[before] not in "(,[" or after >= len(text):
            return False
        if text[after] not in "),]":
            return False
        opener = _opener(text, start)
        if opener >= 0 and text[opener] == "[":
            opener = _opener(text, opener)
        if opener < 0 or text[opener] != "(":
            return False
        name = re.search(r"(\w+)\s*$", text[max(0, opener - 40) : opener])
        return name is not None and name.group(1) in AGGREGATIONS

    def bandset_numbers(self, listed: str, at: int, name_filter: Sequence[str] = ()) -> list[int]:
        """The band sets a list names: numbers, ranges ``1:3``, dates ``2020-01-01`` and
        date ranges ``2020-01-01:2020-06-30`` separated by commas, in order, once each;
        with `name_filter`, those whose name holds one of its words (any case)."""
        numbers: list[int] = []
        position = at
        for item in listed.split(","):
            value = item.strip()
            first, colon, last = (part.strip() for part in value.partition(":"))
            if value.isdigit():
                numbers.append(self.bandset_number(_number(value), position))
            elif colon and first.isdigit() and last.isdigit():
                low, high = _number(first), _number(last)
                if low > high:
                    raise self.fail(position, f"the range {value} runs backwards")
                self.bandset_number(low, position)
                self.bandset_number(high, position)
                numbers += range(low, high + 1)
            elif _is_date(value):
                numbers += [n for n, b in self.numbered() if b.date == value]
            elif colon and _is_date(first) and _is_date(last):
                if first > last:
                    raise self.fail(position, f"the range of dates {value} runs backwards")
                numbers += [n for n, b in self.numbered() if b.date and first <= b.date <= last]
            else:
                raise self.fail(
                    position,
                    f"{value[:40]!r} is not a band set number, a range (1:3), a date "
                    "(2020-01-31) or a range of dates (2020-01-01:2020-12-31)",
                )
            position += len(item) + 1
        chosen = list(dict.fromkeys(numbers))
        words = [w.strip().lower() for w in name_filter if w.strip()]
        if words:
            chosen = [
                n
                for n in chosen
                if any(w in self.bandsets[n - 1].display_name.lower() for w in words)
            ]
        return chosen

    def bandset_number(self, number: int, at: int) -> int:
        self.bandset(number, at)
        return number

    def numbered(self) -> list[tuple[int, BandSet]]:
        return list(enumerate(self.bandsets, start=1))

    def outputs(
        self, statement: Statement, target: _Target
    ) -> tuple[list[tuple[int, int, str]], int | None]:
        """The replacements in a calculation's ``@ folder @ name`` and the band set its
        ``%n`` adds the output to."""
        separators = statement.separators
        if not separators:
            return [], None
        replacements = []
        name_start = separators[-1] + 1
        given = self.text[name_start : statement.end].strip()
        name = given
        if _BANDSET_PLACEHOLDER.search(name):
            display = self.bandset(self.own or target.number, separators[0]).display_name
            name = _BANDSET_PLACEHOLDER.sub(lambda _: display, name)
        if _DATE_PLACEHOLDER.search(name):
            stamp = (self.now + datetime.timedelta(microseconds=self.dates)).strftime(_DATE_FORMAT)
            self.dates += 1
            name = _DATE_PLACEHOLDER.sub(stamp, name)
        addition = None
        if "%" in name:
            name, _, joins = (part.strip() for part in name.partition("%"))
            if joins == "#":
                if target.number == INLINE:
                    raise self.fail(
                        separators[-1],
                        "'%#' adds the output to the band set '#' names, here the inline band "
                        "set, which is not in the catalog: give a band set number",
                    )
                addition = target.number
            elif joins.isdigit():
                addition = _number(joins)
            else:
                raise self.fail(
                    separators[-1],
                    f"after '%' comes the number of the band set the output joins, or '#', "
                    f"got {joins[:40]!r}",
                )
            self.bandset(addition, separators[-1])
        if target.band is not None:
            name = f"{target.band}{name}"
        if name != given:
            replacements.append((name_start, statement.end, f" {name}"))
        if len(separators) == 2:
            folder = self.text[separators[0] + 1 : separators[1]]
            if _BANDSET_PLACEHOLDER.search(folder):
                number = self.own or target.number
                bandset = self.bandset(number, separators[0])
                if not bandset.bands:
                    raise self.fail(
                        separators[0],
                        "#BANDSET# as a folder is the folder of the first band of "
                        f"{self.label(number)}, which has no bands",
                    )
                parent = posixpath.dirname(bandset.bands[0].data_path) or "."
                replacements.append((separators[0] + 1, separators[1], f" {parent} "))
        return replacements, addition

    def calculation(
        self, statement: Statement, target: _Target
    ) -> tuple[list[tuple[int, int, str]], int | None]:
        """The replacements in one calculation for `target`, and its ``%n``."""
        replacements = []
        expression_end = statement.separators[0] if statement.separators else statement.end
        for match in _QUOTED.finditer(self.text, statement.offset, expression_end):
            content = match.group(1) if match.group(1) is not None else match.group(2)
            new = self.quoted(content, match.start(), match.end(), target)
            if new is not None:
                replacements.append((match.start(), match.end(), new))
        grown = sum(len(t) - (b - a) for a, b, t in replacements)
        if expression_end - statement.offset + grown > MAX_TEXT_LENGTH:
            raise self.fail(
                statement.offset,
                f"with its band set references and aliases expanded, this expression is "
                f"{expression_end - statement.offset + grown} characters long; the limit is "
                f"{MAX_TEXT_LENGTH}",
            )
        outputs, addition = self.outputs(statement, target)
        return replacements + outputs, addition

    # the script

    def iteration(self, header: Statement) -> tuple[str, list[int]]:
        match = _HEADER.fullmatch(self.text, header.offset, header.end)
        if match is None or header.separators:
            raise self.fail(
                header.offset,
                "an iteration is forbandsets[...] or forbandsinbandset[...] with band set "
                "numbers, ranges (1:3), dates or ranges of dates (2020-01-01:2020-12-31), "
                "then an optional name filter",
            )
        if self.own:
            given = "inline_bandset unset" if self.inline is not None else "input_bandset at 0"
            raise self.fail(
                header.offset, f"an iteration reads the band sets of the catalog: leave {given}"
            )
        name_filter = match.group("filter").strip().split(",")
        numbers = self.bandset_numbers(match.group("args"), match.start("args"), name_filter)
        if not numbers:
            raise self.fail(header.offset, "the iteration names no band set")
        return match.group("kind").lower(), sorted(numbers)


def expand_band_calc_bandsets(
    request: BandCalcRequest,
    catalog: BandSetCatalog,
    bandset_number: int = 0,
    input_bandset: int = 0,
    *,
    inline: BandSet | None = None,
    now: datetime.datetime | None = None,
) -> ExpandedBandCalc:
    """`request` with Remotior's band set language expanded from `catalog`: `bandset_number`
    is the band set ``#`` reads (0: the catalog's current one), `input_bandset` the band
    set whose bands are ``"b1"``, ``"b2"``... (0: none) and the aliases read (else
    `bandset_number`'s). `inline`, a band set outside the catalog, built and checked by the
    caller, takes the place of both, which must then be 0. InvalidArgumentError, naming
    the line and column, for what cannot be expanded."""
    text = request.expression
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_SCRIPT_LENGTH:
        return ExpandedBandCalc(request)  # refused as it is by the script's own check
    script = split_script(text, raw=True)
    expander = _Expander(
        text,
        request,
        catalog,
        bandset_number,
        input_bandset,
        inline,
        now or datetime.datetime.now(),
    )
    statements = list(script.statements)
    builder = _Builder(text)
    contexts: list[tuple[int, str]] = []
    additions: list[BandSetAddition] = []
    header = statements[0] if statements and _ITERATION.match(statements[0].expression) else None
    for statement in statements[1:] if header else statements:
        if _ITERATION.match(statement.expression):
            raise expander.fail(
                statement.offset,
                "a band set iteration is the first line of a script, before the lines it repeats",
            )
    if header is None:
        replacements = []
        for statement in statements:
            found, joins = expander.calculation(statement, _Target(expander.default))
            replacements += found
            if joins is not None:
                additions.append(BandSetAddition(statement.number, joins))
        if not replacements and not additions and text == request.expression:
            return ExpandedBandCalc(request)
        builder.span(0, len(text), replacements)
    else:
        kind, numbers = expander.iteration(header)
        body = statements[1:]
        if not body:
            raise expander.fail(header.offset, "the iteration repeats no calculation")
        targets: list[tuple[Statement, _Target, str]] = []
        for number in numbers:
            for statement in body:
                per_band = kind == "forbandsinbandset" and _BAND_PLACEHOLDER.search(
                    statement.expression
                )
                if not per_band:
                    targets.append((statement, _Target(number), f"band set {number}"))
                    continue
                count = len(expander.bandsets[number - 1].bands)
                targets += [
                    (statement, _Target(number, b), f"band set {number}, band {b}")
                    for b in range(1, count + 1)
                ]
                if len(targets) > MAX_STATEMENTS:
                    break
            if len(targets) > MAX_STATEMENTS:
                raise expander.fail(
                    header.offset,
                    f"the iteration makes more than {MAX_STATEMENTS} calculations "
                    f"({len(numbers)} band set(s), {len(body)} line(s) each); a script has "
                    f"at most {MAX_STATEMENTS}",
                )
        for index, (statement, target, described) in enumerate(targets, start=1):
            found, joins = expander.calculation(statement, target)
            contexts.append((builder.length, f"{kind} iteration: {described}"))
            builder.span(statement.offset, statement.end, found)
            builder.write("\n", statement.end)
            if joins is not None:
                additions.append(BandSetAddition(index, joins))
    expanded = builder.text()
    if len(expanded) > MAX_SCRIPT_LENGTH:
        raise expander.fail(
            header.offset if header else 0,
            f"with its band set references, aliases and iterations expanded, the script is "
            f"{len(expanded)} characters long; the limit is {MAX_SCRIPT_LENGTH}",
        )
    return ExpandedBandCalc(
        replace(request, expression=expanded, inputs=tuple(expander.inputs.values())),
        text,
        tuple(builder.pieces),
        tuple(contexts),
        tuple(additions),
        expanded=True,
    )


def add_outputs_to_bandsets(
    additions: Sequence[BandSetAddition],
    results: Sequence[BandCalcResult],
    catalog: BandSetCatalog,
    data_root: DataRoot,
    logger: logging.Logger,
) -> None:
    """Remotior's ``@ name%n`` once the script has run: each output joins the end of its
    band set, its wavelength its position. As in Remotior, an output that cannot join (its
    band set removed meanwhile, or on another grid) is logged, and the script's outputs
    stay."""
    for addition in additions:
        output = results[addition.statement - 1].output_path
        try:
            (band,) = build_bands(data_root, [BandSpec(path=output, raster_band=1)], "")
            for _ in range(3):  # another change of that band set may win the race
                previous, _ = catalog.get(addition.bandset)
                check_band_count(len(previous.bands) + 1)
                if previous.bands:
                    first = previous.bands[0]
                    check_same_grid(
                        [
                            describe(data_root.path(first.data_path), first.raster_band),
                            describe(data_root.path(output), 1),
                        ],
                        [f"band set {addition.bandset}", repr(output)],
                    )
                joined = replace(
                    previous,
                    bands=(*previous.bands, replace(band, wavelength=len(previous.bands) + 1.0)),
                )
                try:
                    catalog.replace(addition.bandset, previous, joined, current=False)
                    break
                except RsgrpcError:
                    continue
            else:
                raise InvalidArgumentError("the band set kept changing")
            logger.info("%r joined band set %d", output, addition.bandset)
        except RsgrpcError as error:
            logger.warning(
                "%r did not join band set %d: %s", output, addition.bandset, error.message
            )


def _opener(text: str, offset: int) -> int:
    """Where the bracket that encloses `offset` opens; -1 for none. Quoted names are
    skipped."""
    depth = 0
    index = offset - 1
    while index >= 0:
        ch = text[index]
        if ch in "\"'":
            index = text.rfind(ch, 0, index)
        elif ch in ")]}":
            depth += 1
        elif ch in "([{":
            if depth == 0:
                return index
            depth -= 1
        index -= 1
    return -1


def _number(digits: str) -> int:
    """A band or band set number; a huge one is just a number that exists nowhere."""
    return int(digits) if len(digits) <= 9 else 10**9


def _is_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _reason(error: InvalidArgumentError) -> str:
    script = _SCRIPT_MESSAGE.fullmatch(error.message)
    return script.group("rest") if script else error.message
