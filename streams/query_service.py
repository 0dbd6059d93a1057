"""The query surface's former single module, kept so that its imports keep working; the
code lives in :mod:`tocsin.streams.query`, split by what it does (ADR 0006)."""

from tocsin.streams.query import *  # noqa: F403
from tocsin.streams.query import __all__ as __all__
