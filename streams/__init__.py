"""The worker and its Kafka I/O, grouped by what each part is:

- ``stages``: the pipeline (span intake, detection, triage, DuckDB projection);
- ``kafka``: consumer/producer set-up, the embedded broker, registry, headers, dead letters;
- ``web``: the HTTP surface (views, intake, tokens, bodies, renderings);
- ``query``: the bounded SQL surface over DuckDB snapshots;
- ``worker``: the Faust app, settings, metrics and the runner.
"""
