"""The latest failing requests a partition's detector counted, by request id, so that a
request can be explained by the id a service logged (``GET /v1/requests/{id}``).

Wide events carry a ``request_id``; the trace summaries triage keeps know only trace ids.
This keeps, per partition, the newest :data:`MOST` failing requests that had a request id:
when it failed (event time), its family and its trace id. It is a lookup aid, not state:
it decides nothing, is in no report or hash, and is not checkpointed, so after a restart
it knows the requests counted since.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from tocsin.processors.family import Family

MOST = 20_000  # per partition: about 2 MB


class FailedRequest(NamedTuple):
    t_ms: int
    family: Family
    trace_id: str | None


class RecentRequests:
    """Failing requests by request id, the newest :data:`MOST` kept."""

    def __init__(self, most: int = MOST) -> None:
        self.most = most
        self.by_id: OrderedDict[str, FailedRequest] = OrderedDict()

    def note(self, request_id: str, t_ms: int, family: Family, trace_id: str | None) -> None:
        by_id = self.by_id
        if request_id in by_id:
            del by_id[request_id]
        by_id[request_id] = FailedRequest(t_ms, family, trace_id)
        if len(by_id) > self.most:
            by_id.popitem(last=False)

    def get(self, request_id: str) -> FailedRequest | None:
        return self.by_id.get(request_id)
