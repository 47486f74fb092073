"""Band calc scripts: several calculations in one expression text, as Remotior takes them.

A script is split into statements here, as text only; each statement's expression is
then parsed against the allow-list like any single expression (`parse_expression`).

- A statement is a line that is not blank and does not start with ``#`` (a comment).
  A line break inside brackets continues the statement, as in Python.
- A statement may end with Remotior's output separator: ``expression @ name`` or
  ``expression @ folder @ name``. ``@`` counts only outside quotes and brackets, so
  an input named ``"a@b"`` stays an input.
- Remotior's band set language (aliases such as ``"#NDVI#"`` or ``"bandset1b1"``,
  ``forbandsets`` iterations, ``%`` after an output name, the ``#BANDSET#`` and
  ``#DATE#`` placeholders) is expanded before this text is checked
  (`rsgrpc.engine.band_calc_bandsets`, which splits the script with ``raw=True``); what
  reaches the check unexpanded is refused with a message naming it. Remotior's temporary
  folder (``@ temp @ name``) is refused: the server has no folder of the client's for it.

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
# Remotior's placeholders: a '#' that starts one of them does not start a comment.
_PLACEHOLDER = re.compile(r"#(?:BANDSET|DATE|BAND)#", re.IGNORECASE)
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
    end: int = -1  # where its text ends (before a comment after it, or the line break)
    separators: tuple[int, ...] = ()  # where its '@' are


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


def split_script(text: str, *, raw: bool = False) -> Script:
    """The statements of `text`, in order; InvalidArgumentError for a malformed script.

    With `raw`, Remotior's placeholders in outputs (``#BANDSET#``, ``#DATE#``, ``%``) are
    kept as text for the band set expansion, which replaces them, rather than refused.
    Every statement counts against MAX_STATEMENTS either way: an expansion checks its own
    count."""
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
                _statement(text, start, end, separators, comments, len(statements) + 1, raw)
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
        elif ch == "#" and (placeholder := _PLACEHOLDER.match(text, i)):
            i = placeholder.end()
            continue
        elif ch == "#" and not (i > start and text[i - 1] == "%"):
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
    text: str,
    start: int,
    end: int,
    separators: list[int],
    comments: list[int],
    number: int,
    raw: bool,
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
        outputs = text[separators[0] + 1 : end].upper()
        for variable in ("#BANDSET#", "#DATE#"):  # Remotior's, not comments
            if variable in outputs and not raw:
                raise error_at(
                    text,
                    separators[0],
                    f"{variable} in an output name or folder is replaced from the session's "
                    "band sets: it was not expanded here",
                )
        # A comment after the output's name is not part of it.
        end = min([c for c in comments if c > separators[-1]], default=end)
    else:
        end = min([c for c in comments if c > start], default=end)
    while end > start and text[end - 1].isspace():
        end -= 1
    if len(separators) == 1:
        name = text[separators[0] + 1 : end].strip()
    elif len(separators) == 2:
        folder = text[separators[0] + 1 : separators[1]].strip()
        name = text[separators[1] + 1 : end].strip()
    if separators:
        _check_output_text(text, separators[0], folder, name, raw)
    output_offset = separators[0] if separators else start
    return Statement(
        number,
        line,
        start,
        text[start:expression_end],
        folder,
        name,
        output_offset,
        end,
        tuple(separators),
    )


def _check_output_text(text: str, at: int, folder: str | None, name: str | None, raw: bool) -> None:
    if folder is not None:
        if not folder:
            raise error_at(text, at, "the folder between the two '@' is empty")
        if folder.lower() == "temp":
            raise error_at(
                text,
                at,
                "Remotior's temporary folder ('@ temp @ name') is not served: the server "
                "has no folder of the client's for temporary files; name a folder under "
                "the server's data roots",
            )
    if not name:
        raise error_at(text, at, "the output name after '@' is empty")
    if "%" in name and not raw:
        raise error_at(
            text,
            at,
            "'name%number' adds an output to a band set of the session's catalog: it was "
            "not expanded here",
        )


def output_file_name(name: str) -> tuple[str, str]:
    """The file a statement's ``@ name`` writes and the name later lines read it by:
    ``name.tif`` and ``name``; a name ending in .tif, .tiff or .vrt (a virtual output)
    keeps it, without it."""
    lower = name.lower()
    stem = name
    for suffix in (*_TIFF_SUFFIXES, ".vrt"):
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
    """Where and what of Remotior's band set language `expression` holds unexpanded, if
    any: an iteration, an alias or a band set band not among `names`. The BandCalc service
    expands them from the session's catalog first (`band_calc_bandsets`); what is left is
    written where no expansion applies (an iteration after the first line, a band set
    reference outside quotes)."""
    iteration = _ITERATION.match(expression)
    if iteration:
        return iteration.start(1), (
            f"a band set iteration ({iteration.group(1)}[...]) is the first line of a "
            "script, before the lines it repeats"
        )
    for match in _ALIAS.finditer(expression):
        if match.group(1) not in names:
            return match.start(), (
                f'alias "{match.group(1)}" was not expanded: aliases read the band sets of '
                "the session's catalog"
            )
    for match in _BANDSET_BAND.finditer(expression):
        if match.group(0) not in names:
            return match.start(), (
                f"band set reference {match.group(0)!r} was not expanded: write it in "
                f'quotes, as Remotior does ("{match.group(0)}")'
            )
    return None
