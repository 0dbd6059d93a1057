"""Record paths: their grammar, compiled once, and their resolution against a record.

Paths (compiled once): ``a.b.c`` walks objects; ``"user.id"`` is one key containing dots
(``\\"`` and ``\\\\`` escape inside quotes); ``name[N]`` takes element N of a list (negative
from the end); ``name[]`` takes the list's *chosen* element: the first one its ``[where]``
rule accepts, by default the first whose ``status`` (else ``outcome``) is present and not
``ok``/``OK``/``Ok`` — the first failing step. Every path through the same ``name[]`` sees
the same element, so an anchor's name and its error code always come from one step.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from tocsin.processors.mapping.values import _key_text


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


_KEY, _INDEX, _SELECT = 0, 1, 2
_BARE = re.compile(r'[^.\[\]"\s]+')
_INDEX_RE = re.compile(r"\[(-?\d{1,9})?\]", re.ASCII)


@dataclass(frozen=True, slots=True)
class Rule:
    """Which element ``list[]`` chooses: the first object whose value at one of ``fields``
    (the first present) is in / not in ``values``, or, for ``exists``, is present."""

    fields: tuple[FieldPath, ...]
    kind: str  # "in" | "not_in" | "exists"
    values: frozenset[str]

    def accepts(self, element: Any) -> bool:
        if not isinstance(element, dict):
            return False
        for path in self.fields:
            value = path.get(element, None)
            if value is MISSING:
                continue
            if self.kind == "exists":
                return True
            key = _key_text(value)
            if key is None:
                return False
            return (key in self.values) == (self.kind == "in")
        return False


@dataclass(frozen=True, slots=True)
class FieldPath:
    text: str  # canonical form
    ops: tuple[tuple[int, Any], ...]

    def get(self, obj: Any, memo: dict[str, Any] | None) -> Any:
        """The value at this path, or MISSING (absent, null, or the wrong container)."""
        cur = obj
        for kind, arg in self.ops:
            if kind == _KEY:
                if not isinstance(cur, dict):
                    return MISSING
                cur = cur.get(arg)
            elif kind == _INDEX:
                if not isinstance(cur, list) or not -len(cur) <= arg < len(cur):
                    return MISSING
                cur = cur[arg]
            else:
                list_id, rule = arg
                if memo is not None and list_id in memo:
                    cur = memo[list_id]
                else:
                    chosen: Any = None
                    if isinstance(cur, list):
                        for element in cur:
                            if rule.accepts(element):
                                chosen = element
                                break
                    if memo is not None:
                        memo[list_id] = chosen
                    cur = chosen
            if cur is None:
                return MISSING
        return cur

    def selects(self) -> list[str]:
        return [arg[0] for kind, arg in self.ops if kind == _SELECT]

    def getter(self) -> Callable[[dict[str, Any], dict[str, Any]], Any]:
        """:meth:`get` specialised for the common shapes (one key, a few keys), which
        are most of a mapping; called with the record object, always a dict."""
        if any(kind != _KEY for kind, _ in self.ops):
            return self.get
        keys = tuple(arg for _, arg in self.ops)
        if len(keys) == 1:
            key = keys[0]

            def get_one(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
                value = obj.get(key)
                return MISSING if value is None else value
            return get_one
        if len(keys) == 2:
            k1, k2 = keys

            def get_two(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
                value = obj.get(k1)
                if not isinstance(value, dict):
                    return MISSING
                value = value.get(k2)
                return MISSING if value is None else value
            return get_two

        def get_keys(obj: dict[str, Any], memo: dict[str, Any]) -> Any:
            value: Any = obj
            for key in keys:
                if not isinstance(value, dict):
                    return MISSING
                value = value.get(key)
            return MISSING if value is None else value
        return get_keys


def _quote(segment: str) -> str:
    if _BARE.fullmatch(segment):
        return segment
    return '"' + segment.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_ops(text: str) -> list[tuple[int, Any]]:
    """``a."b.c"[0].d[]`` -> [(KEY,a), (KEY,b.c), (INDEX,0), (KEY,d), (SELECT,None)]."""
    if not isinstance(text, str) or not text:
        raise ValueError("a path is a non-empty string")
    ops: list[tuple[int, Any]] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, chars = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    if j + 1 >= n or text[j + 1] not in '"\\':
                        raise ValueError(f'only \\" and \\\\ escape inside quotes, at {j + 1}')
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise ValueError(f"unterminated quote opened at {i + 1}")
            ops.append((_KEY, "".join(chars)))
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if m is None:
                what = "end" if i >= n else repr(text[i])
                raise ValueError(f"expected a key at {i + 1}, found {what}")
            ops.append((_KEY, m.group()))
            i = m.end()
        while i < n and text[i] == "[":
            m = _INDEX_RE.match(text, i)
            if m is None:
                raise ValueError(f"expected [] or [N] at {i + 1}")
            ops.append((_SELECT, None) if m.group(1) is None else (_INDEX, int(m.group(1))))
            i = m.end()
        if i == n:
            return ops
        if text[i] != ".":
            raise ValueError(f"expected '.' or '[' at {i + 1}, found {text[i]!r}")
        i += 1


def _canonical(ops: Iterable[tuple[int, Any]]) -> str:
    out = ""
    for kind, arg in ops:
        if kind == _KEY:
            out += ("." if out else "") + _quote(arg)
        elif kind == _INDEX:
            out += f"[{arg}]"
        else:
            out += "[]"
    return out


def parse_path(text: str, where: dict[str, Rule] | None = None,
               default_rule: Rule | None = None) -> FieldPath:
    """Compile a path; each ``[]`` gets the rule of its list (by canonical prefix)."""
    raw = _parse_ops(text)
    ops: list[tuple[int, Any]] = []
    for kind, arg in raw:
        if kind == _SELECT:
            list_id = _canonical([*ops, (kind, arg)])
            rule = (where or {}).get(list_id, default_rule)
            if rule is None:
                raise ValueError("[] is not allowed here")
            ops.append((_SELECT, (list_id, rule)))
        else:
            ops.append((kind, arg))
    return FieldPath(_canonical(ops), tuple(ops))


DEFAULT_RULE = Rule(
    (parse_path("status"), parse_path("outcome")), "not_in", frozenset({"ok", "OK", "Ok"}))
