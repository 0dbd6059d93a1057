"""Analysts' SQL, read-only and bounded for real (ADR 0006).

Nothing here touches the writer's connection. A query runs

* on a **copy** of the database file (a *snapshot*): the sink checkpoints (the writer is
  held for milliseconds) and the file is copied without the writer's lock; a new snapshot
  is taken at most every ``snapshot_interval_ms`` and only when a batch was committed
  since the last one, and copying never takes more than a tenth of the time (two copies
  are at least ten copy times apart). DuckDB 2.0 refuses to open or attach the writer's
  file a second time in the same process ("Unique file handle conflict"), and another
  process cannot open it while the worker holds its lock, so a copy is what a reader can
  open;
* in a **child process** (one of at most ``concurrency``; beyond that: 429), which opens
  the snapshot ``read_only`` with ``enable_external_access = false``,
  ``lock_configuration = true``, ``memory_limit``, ``threads`` and no temp directory, under
  an address-space limit (``memory_limit`` + 1 GiB: DuckDB's limit does not cover the
  vectors of a query, and ``SELECT repeat('x', 50000000) FROM range(2048)`` asks for
  100 GB), at ``nice`` 19 and, on Linux, ``SCHED_IDLE``, so that detection and
  projection keep the CPU and the GIL;
* with a **statement check** first (one statement; SELECT, or EXPLAIN without ANALYZE of a
  SELECT) for a clear message; the guarantee is the read-only copy, not the check;
* **streamed**: rows are fetched in batches and encoded as they come; never more than
  ``max_rows`` + 1 rows or ``max_bytes`` of JSON (413 beyond either);
* under a **time limit** (``timeout_ms``, then ``interrupt()``: 408) and cancelled
  (``interrupt()``) when the HTTP client goes away.

The same child runs ``tocsin query`` when no worker holds the file (:func:`run_file_query`).

By job: ``statements`` (the check), ``limits``, ``snapshots`` (the copies), ``child`` (the
process that runs a query with its limits; ``python -m tocsin.streams.query``),
``protocol`` (answers and frames between the two), ``service`` (QueryService),
``file_query`` (run_file_query).
"""

from tocsin.streams.query.child import duckdb_config, rows_json
from tocsin.streams.query.file_query import run_file_query
from tocsin.streams.query.limits import QueryLimits, parse_bytes
from tocsin.streams.query.protocol import QueryAnswer
from tocsin.streams.query.service import QueryService, answer_unless_gone
from tocsin.streams.query.snapshots import Snapshot, Snapshots
from tocsin.streams.query.statements import QueryRefused, check_statement

__all__ = [
    "QueryAnswer",
    "QueryLimits",
    "QueryRefused",
    "QueryService",
    "Snapshot",
    "Snapshots",
    "answer_unless_gone",
    "check_statement",
    "duckdb_config",
    "parse_bytes",
    "rows_json",
    "run_file_query",
]
