"""Worker settings: defaults, then ``TOCSIN_*`` environment variables, then CLI flags.

pydantic-settings does the environment parsing and validation; detection settings are
the pure core's :class:`DetectorConfig`, nested as ``TOCSIN_DETECTOR__MIN_COUNT`` etc.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tocsin.processors.config import DetectorConfig
from tocsin.processors.rules import RuleSet, load_rules_file


class Topics(BaseModel):
    model_config = ConfigDict(frozen=True)

    events: str = "tocsin.events"
    incidents: str = "tocsin.incidents"
    windows: str = "tocsin.windows"
    dlq: str = "tocsin.dlq"
    signals: str = "tocsin.signals"
    reports: str = "tocsin.reports"
    spans: str = "otlp_spans"  # the Collector Kafka exporter's default traces topic
    # Internal, written and read by Tocsin's own stages (ADR 0015):
    spans_by_trace: str = "tocsin.spans.by-trace"  # spans regrouped, key = trace id
    summaries: str = "tocsin.trace-summaries"  # failing traces, key = service


class NotifySettings(BaseModel):
    """Where incidents are told (ADR 0017); a channel is on when its URL or key is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slack_webhook_url: str | None = Field(None, description="a Slack incoming webhook URL")
    pagerduty_routing_key: str | None = Field(
        None, description="a PagerDuty Events API v2 integration (routing) key")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue",
                               description="the Events API v2 endpoint (tests point it "
                               "at a local receiver)")
    webhook_url: str | None = Field(None, description="a generic webhook URL")
    webhook_secret: str | None = Field(
        None, description="HMAC-SHA256 key of the webhook's X-Tocsin-Signature")
    timeout_ms: int = Field(10_000, ge=100, description="one delivery attempt's time limit")
    attempts: int = Field(8, ge=1, le=100, description="attempts before a notification "
                          "is marked failed")
    backoff_ms: int = Field(1_000, ge=1, description="the first retry's wait; it doubles")
    backoff_cap_ms: int = Field(300_000, ge=1, description="the longest wait between tries")
    report_wait_ms: int = Field(
        30_000, ge=0, description="how long a notification waits for the report of its "
        "lifecycle change before it goes without one")

    def channels(self) -> list[str]:
        return [c for c, on in (("slack", self.slack_webhook_url),
                                ("pagerduty", self.pagerduty_routing_key),
                                ("webhook", self.webhook_url)) if on]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOCSIN_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    broker: str | None = Field(None, description="HOST:PORT of Kafka; None = embedded Tansu")
    db: str = Field("tocsin-data/tocsin.duckdb", description="DuckDB file of the projection")
    http_port: int = Field(8077, ge=0, le=65535, description="query/health HTTP port (0=off)")
    http_bind: str = Field("127.0.0.1", description="address the HTTP port binds")
    app_id: str = "tocsin"
    topics: Topics = Topics()
    partitions: int = Field(6, ge=1, description="partitions of topics Tocsin creates")
    replication_factor: int = Field(1, ge=1)
    incident_encoding: Literal["avro", "json"] = "avro"
    spans_encoding: Literal["auto", "otlp_proto", "otlp_json"] = "auto"
    spans_idle_ms: int = Field(
        2_000, ge=0, description="wall time a caught-up, quiet otlp_spans partition holds "
        "the merge back before the others go on without it (ADR 0011)")
    schema_registry_url: str | None = None
    event_mapping: str | None = Field(
        None, description="TOML mapping file: JSON records on the events topic are read "
        "through it onto wide_event.v1 (ADR 0013)")
    rules: str | None = Field(
        None, description="TOML rules file: detector settings and correlation windows per "
        "service, env or family pattern, error-rate and latency rules (ADR 0022)")
    role: Literal["all", "detect", "project"] = "all"
    session_timeout_ms: int = Field(6_000, ge=1_000)
    broker_outage_exit_ms: int = Field(
        30_000, ge=1_000, description="a broker unreachable this long makes the worker exit "
        "non-zero (a supervisor restarts it); one that returns without our topics, at once")
    broker_storage: str | None = Field(
        None, description="storage engine URL of the embedded broker (Tansu), e.g. "
        "postgres://user:pass@host/db; default memory:// (lost when it stops)")
    checkpoint_interval_ms: int = Field(1_000, ge=10)
    max_record_bytes: int = Field(256 * 1024, ge=1024)
    dlq_max_value_bytes: int = Field(
        512 * 1024, ge=0, description="bytes of a rejected record's value kept in its dead "
        "letter; the original size and the sha256 of the whole value always are (ADR 0014)")
    fetch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_poll_records: int = Field(5_000, ge=1)
    retention_ms: int = Field(72 * 3600 * 1000, description="events/windows/dlq retention")
    incident_retention_ms: int = Field(168 * 3600 * 1000)
    detector: DetectorConfig = DetectorConfig()
    notify: NotifySettings = NotifySettings()
    news_cooldown_ms: int = Field(
        15 * 60_000, ge=0, description="the same news on an incident (an `updated` event "
        "with the same signature) is told again only after this much event time (ADR 0018)")
    intake_tokens: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict, description="source name -> bearer token (the name a provider "
        "or 'otlp') or {token, providers, kinds, traces}; empty = no auth (ADR 0014)")
    api_tokens: dict[str, str] = Field(
        default_factory=dict, description="name -> bearer token for reads: query, incidents, "
        "reports, metrics; empty = open reads (loopback only)")
    metrics_public: bool = Field(False, description="serve /metrics without an API token")
    insecure: bool = Field(False, description="allow a non-loopback HTTP bind without tokens")
    http_header_timeout_ms: int = Field(
        10_000, ge=100, description="a connection must send a whole request head in this "
        "time (and an idle keep-alive connection is closed after it)")
    http_body_timeout_ms: int = Field(10_000, ge=100, description="time to receive a body")
    action_timeout_ms: int = Field(
        10_000, ge=100, description="how long POST /v1/incidents/{id}/actions waits for the "
        "decision before it answers 202 (the action stays on the log)")
    query_max_rows: int = Field(
        100_000, ge=1, description="rows of a /v1/query answer; 413 beyond (ADR 0006)")
    query_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="bytes of a query answer's JSON; 413 beyond")
    query_timeout_ms: int = Field(
        30_000, ge=1, description="a query running longer is interrupted: 408")
    query_memory_limit: str = Field(
        "256MB", pattern=r"^\s*\d+(\.\d+)?\s*([kKmMgGtT][iI]?[bB]|[bB])?\s*$",
        description="DuckDB memory_limit of each query's process (its address space: this "
        "+ 1 GiB); 422 beyond")
    query_concurrency: int = Field(
        4, ge=1, description="queries running at once, each in its own process; 429 beyond")
    query_snapshot_interval_ms: int = Field(
        500, ge=0, description="queries read a copy of the database at most this old while "
        "the projection writes (a fresh copy at most this often)")
    traces_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="/v1/traces body limit, after decompression")
    intake_max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="/v1/signals body limit, after decompression")
    intake_rate_per_s: float = Field(50.0, gt=0, description="signals a second per source")
    intake_burst: float = Field(100.0, ge=1, description="signals a source may send at once")


_RULES: dict[tuple[str, str], RuleSet] = {}


def rules_of(settings: Settings) -> RuleSet:
    """The rules file ``settings.rules`` names, loaded and checked against the detector
    settings once per process (RuleSet.empty() without one); RulesError names the line."""
    if settings.rules is None:
        return RuleSet.empty()
    key = (settings.rules, settings.detector.fingerprint())
    found = _RULES.get(key)
    if found is None:
        found = _RULES[key] = load_rules_file(settings.rules, base=settings.detector)
    return found
