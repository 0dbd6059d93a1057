"""The worker's HTTP surface: views, webhook and OTLP intake, API tokens, request bodies,
report renderings and the OpenAPI document."""
