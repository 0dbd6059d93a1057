"""The mapping's errors: a mapping file that cannot be used, a record it cannot map, and
the internal signal of a value that does not convert."""

from __future__ import annotations

from tocsin.schemas.codec import SchemaError


class MappingError(ValueError):
    """A mapping file that cannot be used; the message names the file, line and key."""


class MappedFieldError(SchemaError):
    """A record the mapping cannot turn into a wide event. ``field`` is the wide_event.v1
    field (as the mapping names it: ``service``, ``downstream.service``, ``anchor.name``,
    ``attributes.region``); ``source`` the record path(s) it is mapped from, if any."""

    def __init__(self, message: str, field: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(message, field)


class _Bad(Exception):
    """A value that does not convert; caught in :meth:`EventMapping.apply`."""
