"""Confluent Schema Registry client, for the Confluent wire format (``00`` + schema id).

Used only when ``TOCSIN_SCHEMA_REGISTRY_URL`` is set: incoming records framed with a
schema id are decoded with the writer schema fetched from the registry (cached per id);
outgoing incident events are framed with the id the registry gives our schema under
``<topic>-value``. Plain HTTP through urllib: two endpoints, called once per schema.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tocsin.schemas.codec import AvroSchema, SchemaError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(RuntimeError):
    """The registry could not be reached or refused the request."""


class SchemaRegistry:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, AvroSchema] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None
              ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": CONTENT_TYPE,
                                              "Accept": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"{method} {path}: HTTP {exc.code} {exc.read()[:200]!r}"
                                ) from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise RegistryError(f"{method} {path}: {exc}") from exc

    def lookup(self, schema_id: int) -> AvroSchema:
        """The writer schema of a record framed with ``schema_id``."""
        found = self._by_id.get(schema_id)
        if found is None:
            try:
                text = self._call("GET", f"/schemas/ids/{schema_id}")["schema"]
            except (RegistryError, KeyError) as exc:
                raise SchemaError(f"schema id {schema_id} unknown to the registry: {exc}"
                                  ) from exc
            found = self._by_id[schema_id] = AvroSchema.from_text(f"registry:{schema_id}",
                                                                  text)
        return found

    def register(self, subject: str, schema: AvroSchema) -> int:
        key = (subject, schema.name)
        if key not in self._ids:
            answer = self._call("POST", f"/subjects/{subject}/versions",
                                {"schema": json.dumps(schema.raw)})
            self._ids[key] = int(answer["id"])
        return self._ids[key]


def confluent_frame(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + body
