"""Band calc scripts: several calculations in one expression text, as Remotior takes them.

A script is split into statements here, as text only; each statement's expression is
then parsed against the allow-list like any single expression (`parse_expression`).

- A statement is a line that is not blank and does not start with ``#`` (a comment).
  A line break inside brackets continues the statement, as in Python.
- A statement may end with Remotior's output separator: ``expression @ name`` or
  ``expression @ folder @ name``. ``@`` counts only outside quotes and brackets, so
  an input named ``"a@b"`` stays an input.
- Remotior's features that need BandSets (aliases such as ``"#NDVI#"`` or
  ``"bandset1b1"``, ``forbandsets`` iterations, ``%`` after an output name, the
  ``#BANDSET#`` and ``#DATE#`` variables) and its temporary folder (``@ temp @ name``)
  are refused as not supported yet.

Nothing here touches a file: output paths are resolved and confined by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rsgrpc.engine.errors import InvalidArgumentError

MAX_STATEMENTS: Final = 100
# Each statement has the expression parser's limits; the whole text has this one.
MAX_SCRIPT_LENGTH: Final = 200_000
OUTPUT_SEPARATOR: Final = "@"
_TIFF_SUFFIXES: Final = (".tif", ".tiff")
_NAME_LIMIT: Final = 64
# A file name: a letter, digit or '_' first, then those, '-', '.' and spaces.
_OUTPUT_NAME = re.compile(r"\w[\w .\-]*")
# Remotior's aliases, which need BandSets: "#NIR#", "#NDVI#", "bandset1b1", "bandset#b2".
_ALIAS = re.compile(r'"(#[^"#]*#)"')
_BANDSET_BAND = re.compile(r"\bbandset(?:\d+|#|\*)?b(?:\d+|\*)(?![\w])", re.IGNORECASE)
_ITERATION = re.compile(r"^\s*(forbandsets|forbandsinbandset)\b", re.IGNORECASE)
_OPENERS: Final = "([{"
_CLOSERS: Final = ")]}"


@dataclass(frozen=True)
class Statement:
    """One calculation of a script.

    ``line``: the script's line where it starts, from 1; ``offset``: where its expression
    starts in the script's text; ``expression``: its text up to the first ``@``;
    ``folder`` and ``name``: what follows ``@`` (stripped; None when absent);
    ``number``: its place among the statements, from 1.
    """

    number: int
    line: int
    offset: int
    expression: str
    folder: str | None
    name: str | None
    output_offset: int  # where its first '@' is; its start when it has none


@dataclass(frozen=True)
class Script:
    """The statements of ``text`` (with its line breaks made ``\\n``), in order."""

    text: str
    statements: tuple[Statement, ...]
    has_comments: bool

    @property
    def is_single_expression(self) -> bool:
        """One calculation, written as today's single expression: no ``@``, no comment line."""
        return (
            len(self.statements) <= 1
            and not self.has_comments
            and all(s.folder is None and s.name is None for s in self.statements)
        )


def script_error(line: int, column: int, message: str, offset: int) -> InvalidArgumentError:
    """The client's error for a mistake at `line`, `column` (1-based) of the script."""
    return InvalidArgumentError(
        f"expression line {line}, column {column}: {message}",
        metadata={"line": str(line), "column": str(column), "position": str(offset)},
    )


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def error_at(text: str, offset: int, message: str) -> InvalidArgumentError:
    line, column = _position(text, offset)
    return script_error(line, column, message, offset)


def split_script(text: str) -> Script:
    """The statements of `text`, in order; InvalidArgumentError for a malformed script."""
    if len(text) > MAX_SCRIPT_LENGTH:
        raise InvalidArgumentError(
            f"expression is {len(text)} characters long; a script's limit is {MAX_SCRIPT_LENGTH}"
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
    statements: list[Statement] = []
    has_comments = False
    start = 0
    while start <= len(text):
        end, separators, comments = _statement_end(text, start)
        body = text[start:end]
        stripped = body.strip()
        if stripped.startswith("#"):
            has_comments = True
            # A comment is one line, even with an open bracket in it.
            newline = text.find("\n", start)
            end = len(text) if newline < 0 else newline
        elif stripped:
            if len(statements) == MAX_STATEMENTS:
                raise error_at(text, start, f"a script has at most {MAX_STATEMENTS} calculations")
            statements.append(
                _statement(text, start, end, separators, comments, len(statements) + 1)
            )
        start = end + 1
    return Script(text, tuple(statements), has_comments)


def _statement_end(text: str, start: int) -> tuple[int, list[int], list[int]]:
    """Where the statement starting at `start` ends (a line break outside brackets, or the
    end), the positions of ``@`` in it outside quotes, brackets and comments, and where
    its comments outside brackets start."""
    depth = 0
    quote = ""
    separators: list[int] = []
    comments: list[int] = []
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            quote = ""  # a quote does not span lines
            if depth == 0:
                return i, separators, comments
        elif quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            if depth == 0:
                comments.append(i)
            newline = text.find("\n", i)  # a comment to the end of the line
            i = len(text) if newline < 0 else newline
            continue
        elif ch in _OPENERS:
            depth += 1
        elif ch in _CLOSERS:
            depth = max(0, depth - 1)
        elif ch == OUTPUT_SEPARATOR and depth == 0:
            separators.append(i)
        i += 1
    return len(text), separators, comments


def _statement(
    text: str, start: int, end: int, separators: list[int], comments: list[int], number: int
) -> Statement:
    line, _ = _position(text, start)
    if len(separators) > 2:
        raise error_at(
            text,
            separators[2],
            "a line takes at most two '@': expression @ name, or expression @ folder @ name",
        )
    folder = name = None
    expression_end = separators[0] if separators else end
    if separators:
        raw = text[separators[0] + 1 : end].upper()
        for variable in ("#BANDSET#", "#DATE#"):  # Remotior's, not comments
            if variable in raw:
                raise error_at(
                    text,
                    separators[0],
                    f"{variable} in an output name or folder is not supported yet",
                )
        # A comment after the output's name is not part of it.
        end = min([c for c in comments if c > separators[-1]], default=end)
    if len(separators) == 1:
        name = text[separators[0] + 1 : end].strip()
    elif len(separators) == 2:
        folder = text[separators[0] + 1 : separators[1]].strip()
        name = text[separators[1] + 1 : end].strip()
    if separators:
        _check_output_text(text, separators[0], folder, name)
    output_offset = separators[0] if separators else start
    return Statement(number, line, start, text[start:expression_end], folder, name, output_offset)


def _check_output_text(text: str, at: int, folder: str | None, name: str | None) -> None:
    if folder is not None:
        if not folder:
            raise error_at(text, at, "the folder between the two '@' is empty")
        if folder.lower() == "temp":
            raise error_at(
                text,
                at,
                "Remotior's temporary folder ('@ temp @ name') is not supported yet: "
                "name a folder under the server's data roots",
            )
    if not name:
        raise error_at(text, at, "the output name after '@' is empty")
    if "%" in name:
        raise error_at(
            text, at, "adding an output to a BandSet ('name%number') is not supported yet"
        )


def output_file_name(name: str) -> tuple[str, str]:
    """The file a statement's ``@ name`` writes and the name later lines read it by:
    ``name.tif`` and ``name``; a name ending in .tif or .tiff keeps it, without it."""
    lower = name.lower()
    if lower.endswith(".vrt"):
        raise ValueError("virtual rasters (.vrt) are not written; name a .tif output")
    stem = name
    for suffix in _TIFF_SUFFIXES:
        if lower.endswith(suffix):
            stem = name[: -len(suffix)]
            break
    if not _OUTPUT_NAME.fullmatch(stem) or stem.endswith((".", " ")) or len(stem) > _NAME_LIMIT:
        raise ValueError(
            f"output name {name!r} is not a valid file name: up to {_NAME_LIMIT} letters, "
            "digits, '_', '-', '.' and spaces, starting with a letter, digit or '_'"
        )
    return (name if stem != name else f"{name}.tif"), stem


def is_tiff_path(path: str) -> bool:
    return path.lower().endswith(_TIFF_SUFFIXES)


def unsupported_feature(expression: str, names: frozenset[str]) -> tuple[int, str] | None:
    """Where and what Remotior feature that needs BandSets `expression` uses, if any: an
    iteration, an alias or a BandSet band not among `names`."""
    iteration = _ITERATION.match(expression)
    if iteration:
        return iteration.start(1), (
            f"BandSet iterations ({iteration.group(1)}) are not supported yet: they need BandSets"
        )
    for match in _ALIAS.finditer(expression):
        if match.group(1) not in names:
            return match.start(), (
                f'aliases such as "{match.group(1)}" are not supported yet: they need BandSets; '
                "name the inputs and write the expression"
            )
    for match in _BANDSET_BAND.finditer(expression):
        if match.group(0) not in names:
            return match.start(), (
                f"BandSet bands such as {match.group(0)!r} are not supported yet: "
                "name the inputs instead"
            )
    return None
