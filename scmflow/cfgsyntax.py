"""SequoiaCM's cfg text format: `[name]` sections holding a table or `key=value` lines.

The format: `[name]` section lines, `#` comment lines, blank lines ignored. A section
whose first line contains `=` holds `key=value` lines; any other section is a table: a
comma-separated header line, then one line per row. Table cells are trimmed; `'` quotes
a cell (a quoted cell keeps its spaces and may hold commas; `''` inside it is one quote)
and `\\` escapes `,`, `'` and `\\` anywhere (before any other character it is a plain
backslash, so Windows-style text survives). A `key=value` value is taken verbatim after
trimming, unless it starts with `'`: then it is one quoted cell, except for the keys a
caller takes verbatim (upgrade.cfg's hook command lines).

Section names, column names and keys match case-insensitively; unknown columns and keys
are accepted, each reported in the caller's warnings. A `#` only starts a comment at the
start of a line, so passwords and paths may contain it. Every problem is a ConfigError
naming the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass

from scmflow.errors import ConfigError

_QUOTE = "'"
_ESCAPE = "\\"
_DELIMITER = ","
_META = (_QUOTE, _ESCAPE, _DELIMITER)
_BLANK = " \t"


@dataclass(frozen=True)
class Line:
    """One line of the file, with its 1-based number."""

    number: int
    text: str


@dataclass(frozen=True)
class Section:
    """A `[name]` section: its lower-case name, the line naming it and the lines under it."""

    name: str
    line: int
    body: tuple[Line, ...]


@dataclass(frozen=True)
class Cell:
    """One table cell, unescaped; `quoted` when it was written in quotes."""

    text: str
    quoted: bool


@dataclass(frozen=True)
class Row:
    """One table row: its line and its cells by lower-case column name."""

    line: int
    cells: dict[str, Cell]

    def get(self, column: str) -> Cell:
        """The cell under `column`; an empty cell when the header lacks that column."""
        return self.cells.get(column.lower(), Cell("", False))


@dataclass(frozen=True)
class Value:
    """One `key=value` line: the key as spelled, the value unquoted, and its raw text."""

    line: int
    key: str
    text: str
    # The trimmed text before any unquoting: hook command lines are split by shlex,
    # whose own quoting rules apply to the whole line.
    raw: str = ""


class _CellError(ValueError):
    """A tokenising problem in cell number `index` of a line."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index


# --- sections -------------------------------------------------------------------------


def split_sections(text: str, path: str, known: tuple[str, ...]) -> dict[str, Section]:
    """The sections of `text` by lower-case name; `known` are the names allowed (lower case)."""
    sections: dict[str, Section] = {}
    current: tuple[str, int] | None = None
    body: list[Line] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            if current is not None:
                _add_section(sections, current, body, path)
            current, body = (_section_name(stripped, number, path, known), number), []
            continue
        if current is None:
            raise ConfigError(
                "text before the first [section] line", path=path, line=number
            )
        body.append(Line(number, raw))
    if current is not None:
        _add_section(sections, current, body, path)
    return sections


def _section_name(stripped: str, number: int, path: str, known: tuple[str, ...]) -> str:
    if not stripped.endswith("]"):
        raise ConfigError("malformed section line (expected [name])", path=path, line=number)
    name = stripped[1:-1].strip().lower()
    if name not in known:
        raise ConfigError(
            f"unknown section [{stripped[1:-1].strip()}]; expected one of "
            + ", ".join(f"[{s}]" for s in known),
            path=path,
            line=number,
        )
    return name


def _add_section(
    sections: dict[str, Section], current: tuple[str, int], body: list[Line], path: str
) -> None:
    name, line = current
    if name in sections:
        raise ConfigError(
            f"duplicate section [{name}] (first at line {sections[name].line})",
            path=path,
            line=line,
        )
    sections[name] = Section(name, line, tuple(body))


def require_section(sections: dict[str, Section], name: str, path: str) -> Section:
    """The section called `name`; ConfigError when the file lacks it."""
    if name not in sections:
        raise ConfigError(f"missing section [{name}]", path=path)
    return sections[name]


# --- tables ---------------------------------------------------------------------------


def read_table(
    section: Section,
    path: str,
    known: tuple[str, ...],
    required: tuple[str, ...],
    quietly_ignored: tuple[str, ...],
    warnings: list[str],
) -> list[Row]:
    """The rows of a table section; its header must name the `required` columns.

    A column neither `known` nor `quietly_ignored` is accepted with a warning.
    """
    if not section.body:
        raise ConfigError(
            f"section [{section.name}] is empty (expected a header line: {', '.join(known)})",
            path=path,
            line=section.line,
        )
    header_line = section.body[0]
    if "=" in header_line.text:
        raise ConfigError(
            f"section [{section.name}] must be a table, not key=value lines "
            f"(expected a header line: {', '.join(known)})",
            path=path,
            line=header_line.number,
        )
    spelled = _read_header(header_line, path, section.name)
    columns = [c.lower() for c in spelled]
    missing = [c for c in required if c.lower() not in columns]
    if missing:
        raise ConfigError(
            f"header of [{section.name}] lacks the required column(s) {', '.join(missing)}",
            path=path,
            line=header_line.number,
            field=missing[0],
        )
    lowered = {k.lower() for k in known + quietly_ignored}
    for column in spelled:
        if column.lower() not in lowered:
            warnings.append(
                f"{path}:{header_line.number}: unknown column '{column}' in "
                f"[{section.name}] ignored"
            )
    return [_read_row(line, spelled, path) for line in section.body[1:]]


def _read_header(line: Line, path: str, section: str) -> list[str]:
    try:
        cells = _split_cells(line.text)
    except _CellError as exc:
        raise ConfigError(exc.message, path=path, line=line.number, field="header") from exc
    columns: list[str] = []
    for index, cell in enumerate(cells):
        name = cell.text.strip()
        if not name:
            raise ConfigError(
                f"empty column name in the header of [{section}] (column {index + 1})",
                path=path,
                line=line.number,
                field="header",
            )
        if name.lower() in (c.lower() for c in columns):
            raise ConfigError(
                f"duplicate column in the header of [{section}]",
                path=path,
                line=line.number,
                field=name,
            )
        columns.append(name)
    return columns


def _read_row(line: Line, columns: list[str], path: str) -> Row:
    try:
        cells = _split_cells(line.text)
    except _CellError as exc:
        where = columns[exc.index] if exc.index < len(columns) else f"cell {exc.index + 1}"
        raise ConfigError(exc.message, path=path, line=line.number, field=where) from exc
    if len(cells) > len(columns):
        raise ConfigError(
            f"row has {len(cells)} cells but the header has {len(columns)} columns",
            path=path,
            line=line.number,
            field=f"cell {len(columns) + 1}",
        )
    if len(cells) < len(columns):
        raise ConfigError(
            f"row has {len(cells)} cells but the header has {len(columns)} columns "
            "(leave a cell empty, but keep its comma)",
            path=path,
            line=line.number,
            field=columns[len(cells)],
        )
    return Row(line.number, {c.lower(): cell for c, cell in zip(columns, cells, strict=True)})


def _split_cells(text: str) -> list[Cell]:
    """Split one table line into cells (see the module docstring for the rules)."""
    cells: list[Cell] = []
    i, end = 0, len(text)
    while True:
        while i < end and text[i] in _BLANK:
            i += 1
        if i < end and text[i] == _QUOTE:
            value, i = _read_quoted(text, i + 1, len(cells))
            while i < end and text[i] in _BLANK:
                i += 1
            if i < end and text[i] != _DELIMITER:
                raise _CellError("text after the closing quote", len(cells))
            cells.append(Cell(value, True))
        else:
            value, i = _read_plain(text, i, len(cells))
            cells.append(Cell(value.strip(), False))
        if i >= end:
            return cells
        i += 1  # past the delimiter


def _read_plain(text: str, i: int, index: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text) and text[i] != _DELIMITER:
        if text[i] == _ESCAPE:
            if i + 1 >= len(text):
                raise _CellError("line ends with the escape character \\", index)
            if text[i + 1] in _META:
                out.append(text[i + 1])
                i += 2
                continue
        out.append(text[i])
        i += 1
    return "".join(out), i


def _read_quoted(text: str, i: int, index: int) -> tuple[str, int]:
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == _ESCAPE and i + 1 < len(text) and text[i + 1] in _META:
            out.append(text[i + 1])
            i += 2
        elif ch == _QUOTE and text[i + 1 : i + 2] == _QUOTE:
            out.append(_QUOTE)
            i += 2
        elif ch == _QUOTE:
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise _CellError("unterminated quote (a quoted cell must close on the same line)", index)


# --- key=value sections ---------------------------------------------------------------


def read_values(
    section: Section,
    path: str,
    known: tuple[str, ...],
    verbatim: frozenset[str],
    warnings: list[str],
) -> dict[str, Value]:
    """The `key=value` lines of a section by lower-case key; a key not `known` is kept with a warning.

    The values of the `verbatim` keys (lower case) are never unquoted: their raw text is theirs.
    """
    values: dict[str, Value] = {}
    lowered_known = {k.lower() for k in known}
    for line in section.body:
        value = _read_value(line, path, section.name, verbatim)
        lowered = value.key.lower()
        if lowered in values:
            raise ConfigError(
                f"duplicate key (first at line {values[lowered].line})",
                path=path,
                line=line.number,
                field=value.key,
            )
        if lowered not in lowered_known:
            warnings.append(
                f"{path}:{line.number}: unknown key '{value.key}' in [{section.name}] ignored"
            )
        values[lowered] = value
    return values


def _read_value(line: Line, path: str, section: str, verbatim: frozenset[str]) -> Value:
    key, sep, rest = line.text.partition("=")
    if not sep:
        raise ConfigError(
            f"section [{section}] holds key=value lines; this line has no '='",
            path=path,
            line=line.number,
        )
    key = key.strip()
    if not key:
        raise ConfigError("empty key before '='", path=path, line=line.number)
    raw = text = rest.strip()
    if text.startswith(_QUOTE) and key.lower() not in verbatim:
        text = _unquote_value(text, path, line.number, key)
    return Value(line.number, key, text, raw)


def _unquote_value(text: str, path: str, line: int, key: str) -> str:
    try:
        cells = _split_cells(text)
    except _CellError as exc:
        raise ConfigError(exc.message, path=path, line=line, field=key) from exc
    if len(cells) != 1:
        raise ConfigError(
            "text after the closing quote", path=path, line=line, field=key
        )
    return cells[0].text
