"""The rules file's syntax (ADR 0022): errors that name a line, durations, the step and
family globs, and where each table and key is written in the TOML text (tomllib gives
values, not positions, so the text is scanned for them)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field


class RulesError(ValueError):
    """A rules file, or a ``--set`` item, that cannot be used.

    ``str(err)`` reads ``rules.toml:12: override #2: min_lift must be >= 1 (got 0.5)``;
    without a line (a ``--set`` item) it is ``SOURCE: message``.
    """

    def __init__(self, message: str, line: int | None = None, source: str = "<rules>") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.source = source

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.message}"


# ---------------------------------------------------------------------- durations

UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"([0-9]{1,12})(ms|s|m|h|d)")
DURATION_FORMS = '"500ms", "90s", "10m", "2h", "1d" or integer milliseconds'


def parse_duration(value: object) -> int:
    """Milliseconds of ``"500ms"``, ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"`` or a
    non-negative integer (milliseconds already); ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a duration cannot be negative (got {value})")
        return value
    if isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        return int(m.group(1)) * UNITS_MS[m.group(2)]
    raise ValueError(f"a duration is {DURATION_FORMS} (got {show(value)})")


def format_duration(ms: int) -> str:
    """The shortest spelling of a duration: 600000 -> "10m", 45000 -> "45s", 0 -> "0ms"."""
    for unit in ("d", "h", "m", "s"):
        if ms and ms % UNITS_MS[unit] == 0:
            return f"{ms // UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


# ---------------------------------------------------------------------- values in messages

_TOML_TYPES = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
               dict: "table"}


def show(value: object) -> str:
    """A value as a message shows it: ``string '10'``, ``float 0.5``, ``table``."""
    kind = _TOML_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    return f"{kind} {value!r}"


def number_text(value: float) -> str:
    """``1`` for 1.0, ``0.05`` for 0.05: numbers in messages as they would be written."""
    return f"{value:g}" if float(value).is_integer() else repr(value)


# ---------------------------------------------------------------------- globs


@dataclass(frozen=True, slots=True)
class Glob:
    """A pattern over a family key (escaped, ``service:step:CODE``) or a step name.

    ``*`` matches any run of characters (``:`` included) and ``?`` any one character;
    every other character is itself (``[`` and ``]`` too: ``GET /items/[id]`` is literal).
    ``literal`` counts the characters that are not wildcards: the pattern's specificity.
    """

    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)
    literal: int = field(compare=False)

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None


def compile_glob(text: str) -> Glob | None:
    """The pattern, with runs of ``*`` made one; None for a pattern that matches
    everything (``*``), which selects nothing more than leaving it out."""
    if not text:
        raise ValueError("an empty pattern matches nothing")
    if any(ord(ch) < 32 for ch in text):
        raise ValueError("a pattern cannot hold control characters (newline, tab, ...)")
    text = re.sub(r"\*{2,}", "*", text)
    if text == "*":
        return None
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text)
    return Glob(text, re.compile(regex, re.DOTALL), sum(ch not in "*?" for ch in text))


def globs_intersect(p: str, q: str) -> bool:
    """Whether some string matches both globs (``*`` and ``?`` special, as in :class:`Glob`):
    a walk of the product of the two patterns' automata."""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        a = p[i] if i < len(p) else None
        b = q[j] if j < len(q) else None
        if a is None and b is None:
            return True
        if a == "*":
            todo.append((i + 1, j))  # the star matches nothing more
            if b is not None and b != "*":
                todo.append((i, j + 1))  # the star takes the character q's token makes
        if b == "*":
            todo.append((i, j + 1))
            if a is not None and a != "*":
                todo.append((i + 1, j))
        if a is not None and b is not None and "*" not in (a, b) and (
                a == b or "?" in (a, b)):
            todo.append((i + 1, j + 1))
    return False


# ---------------------------------------------------------------------- where keys are written


@dataclass(slots=True)
class Section:
    """A table as written: ``[name]``, ``[[name]]``, or the root (name "") at line 1."""

    name: str
    array: bool
    line: int
    keys: dict[str, int] = field(default_factory=dict)

    def line_of(self, key: str | None) -> int:
        """The line of ``key =`` in this table, or the table's header line."""
        return self.keys.get(key, self.line) if key is not None else self.line


_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r""""(?:[^"\\]|\\.)*"|'[^']*'"""
_NAME = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_NAME})\s*(\]\]?)\s*(?:#.*)?")
_ASSIGN = re.compile(rf"\s*({_BARE}|{_QUOTED})\s*([.=])")
_NAME_PART = re.compile(rf"\s*({_BARE}|{_QUOTED})\s*\.?")


def _unquote(part: str) -> str:
    if part[:1] == '"':
        return part[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if part[:1] == "'":
        return part[1:-1]
    return part


_STRINGS = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|#.*""")


def _depth(text: str) -> int:
    """Brackets and braces a line opens, less those it closes (strings, comments aside)."""
    text = _STRINGS.sub("", text)
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")


class LineIndex:
    """Best effort, for messages: the header line of every table and the line of every
    ``key =`` in it. A dotted key or table name is noted in ``problems`` (rules files do
    not use them), so that every key of the parsed document has a line here."""

    def __init__(self, text: str) -> None:
        self.sections = [Section("", False, 1)]
        self.problems: list[tuple[int, str]] = []
        in_string: str | None = None  # the delimiter of an open multi-line string
        depth = 0  # brackets a multi-line array (or inline table) has left open
        for n, line in enumerate(text.split("\n"), 1):
            if in_string is not None:
                if line.count(in_string) % 2:
                    in_string = None
                continue
            if depth > 0:
                depth += _depth(line)
                continue
            if (m := _HEADER.fullmatch(line.rstrip("\r"))) and len(m[1]) == len(m[3]):
                parts = [_unquote(p) for p in _NAME_PART.findall(m[2])]
                if len(parts) > 1:
                    self.problems.append((n, f"[{m[2]}]: dotted table names are not used "
                                             "in rules files; write the keys in [defaults], "
                                             "[[override]], ... themselves"))
                self.sections.append(Section(".".join(parts), len(m[1]) == 2, n))
            elif m := _ASSIGN.match(line):
                key = _unquote(m[1])
                if m[2] == ".":
                    self.problems.append((n, f"{key}.…: dotted keys are not used in rules "
                                             "files; write the key in its own table"))
                self.sections[-1].keys.setdefault(key, n)
                rest = line[m.end():]
                for delim in ('"""', "'''"):
                    if rest.count(delim) % 2:
                        in_string = delim
                        break
                else:
                    depth = _depth(rest)

    @property
    def root(self) -> Section:
        return self.sections[0]

    def table(self, name: str) -> Section | None:
        """The first ``[name]`` (or ``[[name]]``) header."""
        return next((s for s in self.sections[1:] if s.name == name), None)

    def entries(self, name: str) -> list[Section]:
        """The ``[[name]]`` headers, in file order."""
        return [s for s in self.sections[1:] if s.name == name and s.array]

    def top_line(self, key: str) -> int:
        """Where a top-level key or table is written (line 1 when not found)."""
        if key in self.root.keys:
            return self.root.keys[key]
        found = self.table(key)
        return found.line if found is not None else 1


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")


def syntax_error(exc: tomllib.TOMLDecodeError, text: str, source: str) -> RulesError:
    """tomllib's error, its "(at line L, column C)" turned into the error's line."""
    message = str(exc)
    line: int | None = None
    if m := _AT.search(message):
        line = int(m[1])
        message = f"{message[:m.start()]} (column {m[2]})"
    elif m := _AT_END.search(message):
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        message = f"{message[:m.start()]} (at the end of the file)"
    return RulesError(f"not valid TOML: {message}", line, source)


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of a rules file (a byte order mark is dropped); a RulesError naming the
    line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RulesError(f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                         line, source) from None
