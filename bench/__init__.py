"""Tocsin benchmark: throughput vs a bare consumer and quixstreams, detection latency."""
