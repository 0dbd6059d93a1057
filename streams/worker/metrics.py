"""Counters of the worker, rendered in the Prometheus text format by prometheus_client."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(eq=False)
class Metrics(Collector):
    events_in: int = 0
    dead_letters: int = 0
    duplicates_suppressed: int = 0
    checkpoints: int = 0
    rows_projected: int = 0
    reports_published: int = 0
    signals_accepted: int = 0
    deploys_registered: int = 0
    spans_read: int = 0  # decoded off otlp_spans, not yet through the partition merge
    spans_in: int = 0  # through the merge, sent on as events
    spans_rejected: int = 0
    lifecycle: Counter[str] = field(default_factory=Counter)
    log_resets: Counter[str] = field(default_factory=Counter)  # "topic:partition" -> count
    broker_errors: int = 0
    signals_dropped: int = 0  # by the triage fold over its cap (the projection sets it)
    counters: dict[int, dict[str, int]] = field(default_factory=dict)
    # by-trace partition -> its assembler's counters (late spans, duplicates, evictions)
    assembly: dict[int, dict[str, int]] = field(default_factory=dict)
    # The partitioned stages' counts by name (ADR 0015): spans_forwarded, marks_sent,
    # traces_closed, summaries_published, triage_checkpoints, ...
    stages: Counter[str] = field(default_factory=Counter)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("tocsin_events", "wide events decoded and counted",
                                  value=self.events_in)
        yield CounterMetricFamily("tocsin_dead_letters", "records sent to the dead-letter topic",
                                  value=self.dead_letters)
        yield CounterMetricFamily("tocsin_duplicate_emissions_suppressed",
                                  "lifecycle events already on the topic, not sent again",
                                  value=self.duplicates_suppressed)
        yield CounterMetricFamily("tocsin_checkpoints", "detector checkpoints written",
                                  value=self.checkpoints)
        yield CounterMetricFamily("tocsin_rows_projected", "rows written to DuckDB",
                                  value=self.rows_projected)
        yield CounterMetricFamily("tocsin_reports_published", "report versions published",
                                  value=self.reports_published)
        yield CounterMetricFamily("tocsin_signals_accepted", "signals accepted over HTTP",
                                  value=self.signals_accepted)
        yield CounterMetricFamily("tocsin_spans_read", "OTLP spans decoded off otlp_spans",
                                  value=self.spans_read)
        yield CounterMetricFamily("tocsin_spans", "OTLP spans decoded and sent on as events",
                                  value=self.spans_in)
        yield CounterMetricFamily("tocsin_spans_rejected", "OTLP spans refused by the decoder",
                                  value=self.spans_rejected)
        yield CounterMetricFamily("tocsin_signals_dropped",
                                  "signals the triage fold forgot over its cap of held "
                                  "signals, oldest resolved first",
                                  value=self.signals_dropped)
        yield CounterMetricFamily("tocsin_deploys_registered",
                                  "deploys registered from version changes on events",
                                  value=self.deploys_registered)
        resets = CounterMetricFamily("tocsin_log_resets",
                                     "stored positions found beyond a partition's end",
                                     labels=["topic", "partition"])
        for where, n in sorted(self.log_resets.items()):
            topic, _, partition = where.rpartition(":")
            resets.add_metric([topic, partition], n)
        yield resets
        yield CounterMetricFamily("tocsin_broker_errors",
                                  "failed broker health checks (unreachable, topics missing)",
                                  value=self.broker_errors)
        stages = CounterMetricFamily("tocsin_stage_records",
                                     "records and steps of the partitioned stages",
                                     labels=["what"])
        for what, n in sorted(self.stages.items()):
            stages.add_metric([what], n)
        yield stages
        life = CounterMetricFamily("tocsin_lifecycle_events", "lifecycle changes", labels=["kind"])
        for kind, n in sorted(self.lifecycle.items()):
            life.add_metric([kind], n)
        yield life
        dropped = GaugeMetricFamily("tocsin_detector_dropped", "detector drops by cause",
                                    labels=["partition", "cause"])
        for p, values in sorted(self.counters.items()):
            for cause, n in sorted(values.items()):
                dropped.add_metric([str(p), cause], n)
        yield dropped
        assembly = GaugeMetricFamily("tocsin_trace_assembly",
                                     "trace assembly per by-trace partition held here: "
                                     "spans taken, dropped (late, duplicate, over the cap), "
                                     "traces closed and evicted",
                                     labels=["partition", "what"])
        for p, values in sorted(self.assembly.items()):
            for what, n in sorted(values.items()):
                assembly.add_metric([str(p), what], n)
        yield assembly

    def render(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry)

    def summary(self) -> dict[str, object]:
        return {
            "events_in": self.events_in, "dead_letters": self.dead_letters,
            "duplicates_suppressed": self.duplicates_suppressed,
            "checkpoints": self.checkpoints, "rows_projected": self.rows_projected,
            "reports_published": self.reports_published,
            "signals_accepted": self.signals_accepted,
            "signals_dropped": self.signals_dropped,
            "deploys_registered": self.deploys_registered,
            "spans_read": self.spans_read, "spans_in": self.spans_in,
            "spans_rejected": self.spans_rejected,
            "lifecycle": dict(self.lifecycle),
            "log_resets": dict(self.log_resets), "broker_errors": self.broker_errors,
            "stages": dict(self.stages),
            "assembly": {str(p): v for p, v in sorted(self.assembly.items())},
        }
