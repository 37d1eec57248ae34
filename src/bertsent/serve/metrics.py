"""The server's Prometheus metrics (``GET /metrics``): :class:`ServeMetrics`, a registry of the app's own.

Fed by :class:`~bertsent.serve.middleware.MetricsMiddleware` (every HTTP request, by path and status) and
by the batcher (texts, batches, failed batches, the queue). prometheus_client is imported when an app
is made, not with this module.
"""

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)


class ServeMetrics:
    """The server's Prometheus metrics, in a registry of the app's own.

    Not prometheus_client's global registry: two apps in one process (the tests, a program serving two
    folders) would register the same names twice and fail. Every series carries the labels ``model``
    (the folder's name) and ``backend``, so dashboards over several servers need no join;
    ``bertsent_model_info`` adds how the model runs.
    """

    def __init__(
        self,
        model: str,
        backend: str,
        max_batch_size: int,
        info: Mapping[str, object],
        max_batch_tokens: int = 16_384,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        self.labels = {"model": model, "backend": backend}
        names = tuple(self.labels)
        self.requests = Counter(
            "bertsent_http_requests_total", "HTTP requests answered", [*names, "path", "status"], registry=r
        )
        self.latency = Histogram(
            "bertsent_http_request_duration_seconds", "HTTP request latency", [*names, "path"], registry=r
        )

        def series(kind, name: str, documentation: str, **kwargs):
            # The labelled child, made now: each series exists (at 0) from the start, as rate() needs.
            return kind(name, documentation, names, registry=r, **kwargs).labels(**self.labels)

        self.texts = series(Counter, "bertsent_texts_scored_total", "Texts run through the model (windows not counted)")
        self.batch_errors = series(
            Counter,
            "bertsent_batch_errors_total",
            "Model calls that raised (a failed batch of several requests is retried in halves, which count too)",
        )
        self.batch_size = series(
            Histogram,
            "bertsent_batch_size",
            "Rows per model call (a text each; a window each with long_text chunk)",
            buckets=batch_buckets(max_batch_size),
        )
        self.batch_tokens = series(
            Histogram,
            "bertsent_batch_tokens",
            "Padded tokens per model call: its rows times its longest row",
            buckets=batch_buckets(max_batch_tokens),
        )
        self.queue_depth = series(Gauge, "bertsent_queue_depth", "Rows waiting for a batch")
        self.in_flight = series(Gauge, "bertsent_requests_in_flight", "/predict requests held now (queued or running)")
        self.refused = series(
            Counter,
            "bertsent_requests_refused_total",
            "/predict requests refused at once with 429 (over --max-concurrent-requests)",
        )
        series(Info, "bertsent_model", "The served model and how it runs").info({k: str(v) for k, v in info.items()})

    def request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(**self.labels, path=path, status=str(status)).inc()
        self.latency.labels(**self.labels, path=path).observe(seconds)

    def batch(self, rows: int, tokens: int) -> None:
        """One model call on ``rows`` rows, ``tokens`` padded tokens, that succeeded."""
        self.batch_size.observe(rows)
        self.batch_tokens.observe(tokens)

    def scored(self, texts: int) -> None:
        """A request's ``texts`` all scored."""
        self.texts.inc(texts)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The scrape's body and content type: OpenMetrics when the ``Accept`` header asks for it, else text."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def batch_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two up to ``max_batch_size``, which is a bucket too (batches are never larger; used for
    tokens too, where only a single row longer than the cap runs over it)."""
    sizes = {2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size} | {max_batch_size}
    return tuple(float(size) for size in sorted(sizes))
