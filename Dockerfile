# Tocsin worker image.
#
#   docker build -t tocsin .
#   docker run --rm -e TOCSIN_BROKER=kafka:9092 -p 127.0.0.1:8077:8077 -v tocsin-data:/data tocsin
#
# Configuration is the TOCSIN_* environment (pydantic-settings, see streams/worker/settings.py;
# nested settings use "__", e.g. TOCSIN_DETECTOR__MIN_COUNT=10). Without TOCSIN_BROKER the
# worker starts the embedded, memory-only broker: fine for a try-out, never for production.
# docker-compose.yml runs this image as two detect workers and one projection next to a
# three-node Apache Kafka (KRaft).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project (a regular, non-editable install) from only the files the build
# reads: pyproject.toml maps these top-level folders into the `tocsin` package.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tocsin/ tocsin/
COPY processors/ processors/
COPY schemas/ schemas/
COPY streams/ streams/
COPY sinks/ sinks/
RUN pip install . && rm -rf /src

# Run as an unprivileged user. /data holds the DuckDB projection and Faust's state; it is
# created (and owned) here so a fresh named volume mounted on it is writable.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/tocsin tocsin \
    && mkdir /data && chown tocsin:tocsin /data
USER tocsin
WORKDIR /data
VOLUME ["/data"]

# TOCSIN_HTTP_BIND: the HTTP server (health, metrics, query) must listen on all interfaces
# to be reachable through a published port; the worker's own default is 127.0.0.1.
ENV TOCSIN_DB=/data/tocsin.duckdb \
    TOCSIN_HTTP_PORT=8077 \
    TOCSIN_HTTP_BIND=0.0.0.0
EXPOSE 8077

# Healthy once the worker is ready: /readyz answers 200 only when intake, detection and
# projection are up (needs TOCSIN_HTTP_PORT > 0).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('TOCSIN_HTTP_PORT', '8077'), timeout=4)"]

# Exec form: tocsin is PID 1 and gets SIGTERM from `docker stop` (the worker then writes its
# last checkpoint and commits). Other commands reuse the image, e.g.
# `docker compose exec worker tocsin incidents` or `... run --rm worker produce FILE --topic T`.
ENTRYPOINT ["tocsin"]
CMD ["run"]
