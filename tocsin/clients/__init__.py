"""Command-line clients and workload generators: the demo, ``tocsin produce``, ``tocsin
query`` and the OpenTelemetry workload. They talk to a worker over Kafka or HTTP and are
not part of the worker's package."""
