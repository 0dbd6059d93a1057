"""The normalized span: what Tocsin keeps of one OTLP span, whatever its encoding (ADR 0011).

Both decoders (protobuf and OTLP/JSON) pick the attributes named in :data:`WANTED` and hand
them, as plain Python values, to :func:`make_span`. Every rule that reads the OpenTelemetry
semantic conventions therefore lives here once: outcome (is this span an error?), error
code, the peer a client span called. A decoder only knows its wire format.

Units are in the names: ``start_ms`` / ``end_ms`` are epoch milliseconds (nanoseconds
floored), ``duration_ms`` is exact to the nanosecond. Ids are lowercase hex.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypedDict, cast

SpanKind = Literal["internal", "server", "client", "producer", "consumer"]
SpanStatus = Literal["unset", "ok", "error"]

# OTLP enum values (trace.proto). UNSPECIFIED (0) and values this version does not know
# read as INTERNAL: the spec lets receivers assume INTERNAL for UNSPECIFIED, and a future
# kind should not make a span unreadable.
KINDS: dict[int, SpanKind] = {1: "internal", 2: "server", 3: "client", 4: "producer",
                              5: "consumer"}
KIND_NAMES: dict[str, int] = {"SPAN_KIND_UNSPECIFIED": 0, "SPAN_KIND_INTERNAL": 1,
                              "SPAN_KIND_SERVER": 2, "SPAN_KIND_CLIENT": 3,
                              "SPAN_KIND_PRODUCER": 4, "SPAN_KIND_CONSUMER": 5}
STATUSES: dict[int, SpanStatus] = {0: "unset", 1: "ok", 2: "error"}
STATUS_NAMES: dict[str, int] = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1,
                                "STATUS_CODE_ERROR": 2}

# Span.flags bits 8 and 9 (trace.proto SpanFlags): whether the parent's remoteness is known,
# and whether the parent is remote, i.e. in another process.
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200

# gRPC codes that make a SERVER span an error (semconv, gRPC: UNKNOWN, DEADLINE_EXCEEDED,
# UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). On a client every non-OK code does.
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})

MAX_NS = (1 << 64) - 1  # fixed64
_CALL_KINDS = frozenset({"client", "producer"})
DEFAULT_SERVICE = "unknown_service"  # the SDK spec's value when service.name is not set
MAX_TEXT = 2048  # error messages are untrusted and unbounded; keep the start

# Resource attributes read once per ResourceSpans; the first present one of a group wins.
RESOURCE_WANTED = frozenset({"service.name", "service.version", "deployment.environment.name",
                             "deployment.environment"})

# Span attributes the rules read, and the type each is read as; the decoders skip every
# other key without converting it. Current semconv names first, the older names they
# replaced after.
Attrs = TypedDict("Attrs", {
    "http.request.method": str | None, "http.method": str | None,
    "http.route": str | None, "url.template": str | None,
    "http.response.status_code": int | None, "http.status_code": int | None,
    "url.full": str | None, "http.url": str | None, "url.path": str | None,
    "rpc.system": str | None, "rpc.service": str | None, "rpc.method": str | None,
    "rpc.grpc.status_code": int | None,
    "peer.service": str | None, "server.address": str | None, "net.peer.name": str | None,
    "db.system.name": str | None, "db.system": str | None,
    "db.operation.name": str | None, "db.operation": str | None,
    "messaging.system": str | None, "messaging.destination.name": str | None,
    "error.type": str | None, "enduser.id": str | None, "user.id": str | None,
}, total=False)
"""The wanted span attributes, each already the type a rule reads (:func:`clean_attr`):
``make_span`` reads them with a plain ``get``, no checks, on the hot path."""

WANTED = frozenset(Attrs.__annotations__)
INT_KEYS = frozenset({"http.response.status_code", "http.status_code", "rpc.grpc.status_code"})


class SpanProblem(ValueError):
    """One span cannot be used; the other spans of its payload can (OTLP partial success)."""


@dataclass(frozen=True, slots=True)
class Service:
    """Who emitted a batch of spans: read once per resource, shared by its spans."""

    name: str
    env: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class Peer:
    """What a client or producer span called: the wide event's ``downstream``."""

    service: str
    endpoint: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"service": self.service, "endpoint": self.endpoint, "kind": self.kind}


@dataclass(slots=True)
class Span:
    """One span, normalized. ``error`` / ``error_code`` / ``error_message`` are the outcome
    under the rules of ADR 0011, decided once at decode time so that every later stage
    (family counting, trace assembly, propagation) agrees on what failed.

    Not ``frozen``: a frozen dataclass's ``__init__`` sets each of these 25 fields through
    ``object.__setattr__``, 4 µs a span on the hot path, more than the rest of the mapping.
    Treat it as read-only all the same. Positional construction, in field order, is for the
    by-trace wire and checkpoints (:mod:`tocsin.processors.traces.assembler`); everything
    else names the fields."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    parent_is_remote: bool | None  # None when the sender did not say (flags bit 8 unset)
    service: str
    env: str | None
    service_version: str | None
    scope: str | None
    name: str
    kind: SpanKind
    start_ms: int
    end_ms: int
    duration_ms: float | None  # None when the end is before the start
    status: SpanStatus
    http_method: str | None
    http_route: str | None
    http_status: int | None
    grpc_status: int | None
    exception_type: str | None  # from the first `exception` event
    exception_message: str | None
    peer: Peer | None  # client and producer spans only, from attributes
    user_id: str | None
    error: bool
    error_code: str | None
    error_message: str | None


def as_str(value: object) -> str | None:
    """A non-empty string attribute, else None (an empty string says nothing)."""
    return value if isinstance(value, str) and value else None


def as_int(value: object) -> int | None:
    """An integer attribute; digits in a string are accepted (some SDKs send codes as
    strings), booleans and anything else are not."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        try:
            return int(value)
        except ValueError:  # more digits than int() converts (4300)
            return None
    return None


def first_str(attrs: Mapping[str, object], *keys: str) -> str | None:
    for key in keys:
        value = as_str(attrs.get(key))
        if value is not None:
            return value
    return None


def clean_attr(key: str, value: object) -> str | int | None:
    """An attribute value as the rules read it: an int for the status codes of
    :data:`INT_KEYS` (digits in a string accepted, some SDKs send them so), a non-empty
    string for every other key; anything else (empty, a bool, an array, a number where a
    string belongs) is None, as if absent. The decoders call it off their fast path only."""
    return as_int(value) if key in INT_KEYS else as_str(value)


def clean_attrs(raw: Mapping[str, object]) -> Attrs:
    """The :data:`WANTED` keys of a plain mapping, cleaned (for callers outside a decoder)."""
    return cast(Attrs, {k: clean_attr(k, v) for k, v in raw.items() if k in WANTED})


def service_of(attrs: Mapping[str, object]) -> Service:
    """The resource's service, env and version (semconv names; the env's older name
    ``deployment.environment`` is what most SDKs still send)."""
    return Service(
        name=first_str(attrs, "service.name") or DEFAULT_SERVICE,
        env=first_str(attrs, "deployment.environment.name", "deployment.environment"),
        version=first_str(attrs, "service.version"),
    )


def is_error(kind: SpanKind, status: SpanStatus, http_status: int | None,
             grpc_status: int | None, has_exception: bool) -> bool:
    """Whether a span failed. An explicit OK is final (the trace API: OK means a developer
    or operator validated success, and overrides what instrumentation inferred); ERROR is
    an error; otherwise an HTTP status >= 500, a gRPC code that is an error for the span's
    side, or an `exception` event. A 4xx is never inferred as an error: on a server it is
    the caller's fault (semconv), and client instrumentation already sets ERROR when it
    considers a 4xx one."""
    if status != "unset":
        return status == "error"
    if http_status is not None and http_status >= 500:
        return True
    if grpc_status:
        return kind != "server" or grpc_status in GRPC_SERVER_ERRORS
    return has_exception


def error_code_of(error_type: str | None, exception_type: str | None,
                  http_status: int | None, grpc_status: int | None) -> str | None:
    """The family's error code, from documented attributes, first present wins:
    ``error.type``, the exception event's ``exception.type``, ``HTTP_<status>``,
    ``GRPC_<code>``. An ``error.type`` of digits is the semconv fallback of writing the
    status code there; it becomes ``HTTP_<n>`` / ``GRPC_<n>`` so that an instrumentation
    that sets it and one that only sets the status land in the same family. ``_OTHER``
    (semconv's "no better value") falls through to the next source."""
    if error_type and error_type != "_OTHER":
        if error_type.isascii() and error_type.isdigit():
            if http_status is not None:
                return f"HTTP_{error_type}"
            if grpc_status is not None:
                return f"GRPC_{error_type}"
        return error_type
    if exception_type:
        return exception_type
    if http_status is not None and http_status >= 400:
        return f"HTTP_{http_status}"
    if grpc_status:
        return f"GRPC_{grpc_status}"
    return None


def peer_of(attrs: Attrs) -> Peer | None:
    """The callee named by a client/producer span's own attributes: ``peer.service`` (the
    logical name, when instrumentation knows it), ``server.address``, ``net.peer.name``,
    ``rpc.service``, then the database or messaging system. Kind is the protocol family;
    endpoint the route/template, URL path, RPC method, DB operation or destination."""
    rpc = attrs.get("rpc.system")
    db = attrs.get("db.system.name") or attrs.get("db.system")
    messaging = attrs.get("messaging.system")
    service = (attrs.get("peer.service") or attrs.get("server.address")
               or attrs.get("net.peer.name") or attrs.get("rpc.service") or db or messaging)
    if service is None:
        return None
    endpoint: str | None
    if rpc is not None:
        kind: str | None = rpc
        method = attrs.get("rpc.method")
        svc = attrs.get("rpc.service")
        endpoint = f"{svc}/{method}" if svc and method else method
    elif db is not None:
        kind, endpoint = "db", attrs.get("db.operation.name") or attrs.get("db.operation")
    elif messaging is not None:
        kind, endpoint = "messaging", attrs.get("messaging.destination.name")
    else:
        method = attrs.get("http.request.method") or attrs.get("http.method")
        kind = "http" if method else None
        endpoint = attrs.get("url.template") or attrs.get("url.path") or _url_path(
            attrs.get("url.full") or attrs.get("http.url"))
    return Peer(service, endpoint, kind)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _url_path(url: str | None) -> str | None:
    """The path of a URL, without query or fragment (they carry ids and secrets): what
    ``urllib.parse.urlsplit(url).path`` gives for an absolute URL
    (``scheme://host[:port]/path?query#fragment``), a network-path reference
    (``//host/path``) or a path (property-tested), at a fifth of its cost. Anything else
    (``host:port/x``, which urlsplit reads as scheme ``host``) is kept as it is."""
    if url is None:
        return None
    url = url.partition("#")[0].partition("?")[0]
    scheme, sep, rest = url.partition("://")
    if sep and not _SCHEME.fullmatch(scheme):
        sep, rest = "", url
    if not sep and url.startswith("//"):
        rest, sep = url[2:], "//"
    if sep:
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else None
    return url or None


def make_span(service: Service, scope: str | None, trace_id: str, span_id: str,
              parent_span_id: str | None, flags: int, name: str, kind: int,
              start_ns: int, end_ns: int, status_code: int, status_message: str | None,
              attrs: Attrs,
              exception: tuple[str | None, str | None] | None) -> Span:
    """The one constructor both decoders call. ``attrs`` holds the :data:`WANTED` span
    attributes, cleaned (:func:`clean_attr`); ``exception`` is (type, message) of the first
    `exception` event, or None when the span has none. Ids are already validated.

    Both times are required (trace.proto): a span without an end has no event time, and
    is refused with :class:`SpanProblem`. Written flat, with few calls: it runs once per
    span on the hot path."""
    if not 0 < start_ns <= MAX_NS:
        raise SpanProblem("startTimeUnixNano: required, nanoseconds since the epoch")
    if not 0 < end_ns <= MAX_NS:
        raise SpanProblem("endTimeUnixNano: required, nanoseconds since the epoch")
    span_kind = KINDS.get(kind, "internal")
    status = STATUSES.get(status_code, "unset")
    http_status = attrs.get("http.response.status_code")
    if http_status is None:
        http_status = attrs.get("http.status_code")
    grpc_status = attrs.get("rpc.grpc.status_code")
    exc_type, exc_message = exception if exception is not None else (None, None)
    error = is_error(span_kind, status, http_status, grpc_status, exception is not None)
    if error:
        error_code = error_code_of(attrs.get("error.type"), exc_type, http_status,
                                   grpc_status)
        message = status_message or exc_message
        error_message = message[:MAX_TEXT] if message else None
    else:
        error_code = error_message = None
    method = attrs.get("http.request.method") or attrs.get("http.method")
    # Positional, in field order (names in the comments): 1 µs a span less than keywords.
    return Span(
        trace_id,  # trace_id
        span_id,  # span_id
        parent_span_id,  # parent_span_id
        bool(flags & IS_REMOTE) if flags & HAS_IS_REMOTE else None,  # parent_is_remote
        service.name,  # service
        service.env,  # env
        service.version,  # service_version
        scope,  # scope
        name,  # name
        span_kind,  # kind
        start_ns // 1_000_000,  # start_ms
        end_ns // 1_000_000,  # end_ms
        (end_ns - start_ns) / 1_000_000 if end_ns >= start_ns else None,  # duration_ms
        status,  # status
        method,  # http_method
        attrs.get("http.route"),  # http_route
        http_status,  # http_status
        grpc_status,  # grpc_status
        exc_type,  # exception_type
        exc_message[:MAX_TEXT] if exc_message else None,  # exception_message
        peer_of(attrs) if span_kind in _CALL_KINDS else None,  # peer
        attrs.get("enduser.id") or attrs.get("user.id"),  # user_id
        error,  # error
        error_code,  # error_code
        error_message,  # error_message
    )
