"""The statement check (ADR 0006): one statement; SELECT, or EXPLAIN without ANALYZE of a
SELECT. It is there for a clear message; the guarantee is the read-only copy."""

from __future__ import annotations

from typing import Any

import duckdb


class QueryRefused(ValueError):
    """The statement is not one the query surface runs."""


ALLOWED = frozenset({"SELECT", "EXPLAIN"})


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """One SELECT (DuckDB's parser decides), or EXPLAIN of one without ANALYZE."""
    statements = _statements(con, sql)
    if len(statements) != 1:
        raise QueryRefused(f"send exactly one statement, got {len(statements)}")
    try:
        kind = statements[0].type.name
    except ValueError:  # a type Python's StatementType lacks (UPDATE EXTENSIONS in 2.0.1)
        kind = "an unnamed statement type"
    if kind not in ALLOWED:
        raise QueryRefused(f"only SELECT queries are allowed here, got {kind}")
    if kind == "EXPLAIN":
        _check_explain(con, sql)


def _statements(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return list(con.extract_statements(sql))
    except Exception as exc:
        raise QueryRefused(f"cannot parse SQL: {exc}") from exc


def _check_explain(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """EXPLAIN ANALYZE runs its statement: only a plain EXPLAIN of a SELECT passes."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql)
              if kind != duckdb.token_type.comment]
    ends = [pos for pos, _ in tokens[1:]] + [len(sql)]
    words = [sql[pos:end].strip().upper() for (pos, _), end in zip(tokens, ends, strict=True)]
    i = 1  # words[0] is EXPLAIN
    if i < len(words) and words[i].startswith("("):
        depth = 0
        while i < len(words):
            depth += words[i].count("(") - words[i].count(")")
            if words[i].startswith(("ANALYZE", "ANALYSE")):
                break
            i += 1
            if depth <= 0:
                break
    if i >= len(words) or words[i].startswith(("ANALYZE", "ANALYSE")):
        raise QueryRefused("EXPLAIN ANALYZE runs the statement: only EXPLAIN of a SELECT "
                           "is allowed here")
    inner = _statements(con, sql[tokens[i][0]:])
    if len(inner) != 1 or inner[0].type.name != "SELECT":
        raise QueryRefused("only EXPLAIN of a SELECT is allowed here, got EXPLAIN "
                           + (inner[0].type.name if inner else "of nothing"))
