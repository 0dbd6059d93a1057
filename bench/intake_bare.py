"""The bare intake ceiling: an aiohttp endpoint that parses JSON and publishes it, no more.

``python -m bench.intake_bare --broker HOST:PORT --port P --topic T`` serves
``POST /v1/signals`` and ``POST /v1/signals/{provider}`` on 127.0.0.1 with Tocsin's
guarantee (202 only after the broker acknowledged every record) minus everything Tocsin
does in between: no auth, no rate limit, no provider sniffing, no validation, no
normalization, no Avro. The body is parsed with orjson; an ``alerts`` array (a webhook
group) is split into one record per alert, anything else is one record, keyed by its
``service`` when it has one. The producer is Tocsin's own (``new_producer``: acks=all,
linger 5 ms), so the broker round trip is the same. ``GET /healthz`` answers 200 once the
producer is connected.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

from tocsin.streams.kafka.io import TopicSpec, ensure_topics, new_producer, stop_quietly

PRODUCER = web.AppKey("producer", AIOKafkaProducer)
TOPIC = web.AppKey("topic", str)
IDS = itertools.count()


def _records(payload: Any) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of each record a payload becomes."""
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    items = alerts if isinstance(alerts, list) else [payload]
    out = []
    for item in items:
        service = None
        if isinstance(item, dict):
            service = item.get("service") or (item.get("labels") or {}).get("service")
        out.append((service.encode() if isinstance(service, str) else None,
                    orjson.dumps(item)))
    return out


async def signals(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return web.Response(body=orjson.dumps({"error": f"body is not JSON: {exc}"}),
                            status=400, content_type="application/json")
    producer = request.app[PRODUCER]
    topic = request.app[TOPIC]
    futures = [await producer.send(topic, value, key=key) for key, value in _records(payload)]
    for fut in futures:
        await fut
    ids = [f"bare_{next(IDS)}" for _ in futures]
    return web.Response(body=orjson.dumps({"signal_ids": ids}), status=202,
                        content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def serve(broker: str, port: int, topic: str, partitions: int) -> None:
    await ensure_topics(broker, [TopicSpec(topic, partitions, 3600 * 1000)])
    producer = new_producer(broker)
    await producer.start()
    app = web.Application()
    app[PRODUCER] = producer
    app[TOPIC] = topic
    app.router.add_post("/v1/signals", signals)
    app.router.add_post("/v1/signals/{provider}", signals)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"bare intake on 127.0.0.1:{port} -> {topic}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await stop_quietly(producer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.intake_bare")
    p.add_argument("--broker", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", default="bench.intake_bare")
    p.add_argument("--partitions", type=int, default=6)
    args = p.parse_args(argv)
    asyncio.run(serve(args.broker, args.port, args.topic, args.partitions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
