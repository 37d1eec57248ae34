"""Serving under load: ``bertsent serve`` against offline batch prediction, measured in one run.

1. Offline baseline, in this process and before the server starts (so the two never compete):
   ``Predictor(model, batch_size=32).predict_proba(texts)`` on N IMDB test reviews (a stratified,
   seeded subset), timed after a warm-up; its labels are the reference answers.
2. ``python -m bertsent serve --model DIR --port 0`` as a subprocess on 127.0.0.1 (its CPU use is then
   separate from the load generator's), waited for on ``/health``.
3. Load: C client threads, each with its own keep-alive ``httpx.Client``, send one review per request
   (``{"inputs": text}``), cycling through the N reviews, until ``--requests`` (default 2N) have been
   sent or ``--max-seconds`` have passed; or, with ``--duration S``, for S seconds however many
   requests that is. Per-request latency (p50, p99), errors (non-200 or exceptions) and answers that
   differ from the offline labels are counted; ``/info``'s batching counters before and after give the
   mean batch size the server formed; the server's RSS is read at the start and the end (and its peak).
4. Optionally (``--rss-requests``), the server's RSS from /proc before, every 1,000 requests and after
   that many more requests of short texts.
5. Optionally (``--mix SHARE``), long reviews beside one-line ones: the same clients for
   ``--mix-seconds``, first with one-line reviews only (each review's first sentence, at most
   ``--short-words`` words), then with a share SHARE of ``--long-words``-word reviews (the test
   reviews' words run together) among them; the one-line reviews' p50/p99 in each phase, and their
   p99 with the long ones against without.

Every phase counts 429 answers (``--max-concurrent-requests`` reached) apart from errors, so an
overload run (e.g. 256 clients against ``--max-concurrent-requests 32``) shows 200s and 429s only;
``--backoff`` makes a refused client wait the answer's ``Retry-After``, as a well-behaved one does, instead
of retrying at once (a retry storm that spends the shared CPU on refusals).
Goals: server throughput >= 80% of offline batch throughput, 0 errors; with ``--mix``, the one-line
reviews' p99 with the long ones <= 2x their p99 without. The server is stopped at the end (SIGINT,
then terminate/kill if it does not exit), on errors too.

    python benchmarks/serve_load.py --model runs/demo --data ../shared/data/imdb --n 2000 --clients 16 \\
        --rss-requests 10000 --json serve_load.json
    python benchmarks/serve_load.py --model runs/demo --data ../shared/data/imdb --n 2000 --clients 64 \\
        --duration 60 --json serve_load_64x60.json
    python benchmarks/serve_load.py --model runs/demo --data ../shared/data/imdb --n 2000 --clients 64 \\
        --duration 60 --mix 0.1 --json serve_load_mix.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_info, proc_status, restore_sigint, set_threads

from bertsent.config import DataConfig
from bertsent.data.loading import load_data
from bertsent.errors import BertsentError
from bertsent.predict import Predictor
from bertsent.runtime import THREADS_ENV, resolve_threads

HOST = "127.0.0.1"
URL_LINE = re.compile(r"^serving .* at (http://\S+)\s*$")
"""The line ``bertsent serve`` prints once it is bound (port 0: the real port is in it)."""
REQUEST_TIMEOUT = 120.0
"""Seconds one request may take before it counts as an error (a stalled server must not hang the run)."""
GOAL_RATIO = 0.80
"""Server throughput under load against offline batch throughput (issue 35: on the same route)."""
GOAL_MIX_P99 = 2.0
"""One-line reviews' p99 beside long reviews against their p99 alone (issue 35)."""


class LoadError(BertsentError):
    """The server could not be started or reached."""


# --------------------------------------------------------------------------------------------------
# Settings and the machine


def _httpx_version() -> str:
    import httpx

    return httpx.__version__


def load_reviews(data: str, n: int, seed: int) -> list[str]:
    return load_data(DataConfig(data, eval_samples=n, seed=seed), splits=("test",)).test["text"].tolist()


# --------------------------------------------------------------------------------------------------
# Offline baseline


def offline_baseline(model_dir: str, texts: list[str], batch_size: int, warmup: int) -> tuple[dict, list[str]]:
    """Batch throughput of ``Predictor.predict_proba`` and its labels (the reference answers)."""
    started = time.perf_counter()
    predictor = Predictor(model_dir, batch_size=batch_size)
    loaded = time.perf_counter() - started
    predictor.predict_proba(texts[:warmup])
    started = time.perf_counter()
    probs = predictor.predict_proba(texts)
    labels = [predictor.id2label[int(i)] for i in probs.argmax(axis=1)]
    seconds = time.perf_counter() - started
    backend = predictor.backend
    result = {
        "reviews": len(texts),
        "seconds": round(seconds, 3),
        "reviews_per_second": round(len(texts) / seconds, 2),
        "load_seconds": round(loaded, 2),
        "backend": backend.name,
        "threads": getattr(backend, "threads", torch.get_num_threads()),
        "max_length": predictor.max_length,
        "truncation": predictor.truncation,
        "batch_size": batch_size,
    }
    del predictor, backend
    gc.collect()  # the server is about to load its own copy
    return result, labels


# --------------------------------------------------------------------------------------------------
# The server subprocess


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (from /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``python -m bertsent serve`` on a free loopback port; always stopped by :meth:`stop`."""

    def __init__(self, model_dir: str, threads: int, extra: list[str], log: Path) -> None:
        self.log = log
        self.cmd = [sys.executable, "-m", "bertsent", "serve", "--model", model_dir, "--host", HOST, "--port", "0"]
        self.cmd += ["--threads", str(threads), *extra]
        # Unbuffered, so the "serving ... at URL" line reaches the log as soon as it is printed.
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{THREADS_ENV: str(threads)})
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, preexec_fn=restore_sigint
        )
        self.url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])

    def wait_ready(self, client, timeout: float) -> str:
        """Wait for the URL line, then for ``/health`` to answer 200; returns the base URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise LoadError(f"the server exited with {self.proc.returncode}: {self.log_tail()}")
            if not self.url:
                found = (URL_LINE.match(line) for line in self.log.read_text(errors="replace").splitlines())
                self.url = next((m.group(1) for m in found if m), "")
            if self.url:
                with contextlib.suppress(Exception):  # not listening yet
                    if client.get(f"{self.url}/health", timeout=2).status_code == 200:
                        return self.url
            time.sleep(0.2)
        raise LoadError(f"the server was not healthy within {timeout:g} s: {self.log_tail()}")

    def stop(self) -> int | None:
        """Ctrl-C first (uvicorn shuts down cleanly and the CLI prints its summary), then terminate, then kill."""
        if self.alive():
            for stop, wait in ((lambda: self.proc.send_signal(signal.SIGINT), 30), (self.proc.terminate, 10)):
                stop()
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


# --------------------------------------------------------------------------------------------------
# Load generation


class _Tally:
    """What the client threads of one load phase saw, under one lock."""

    def __init__(self, texts: list[str], expected: list[str] | None, kinds: list[str] | None) -> None:
        self.texts, self.expected, self.kinds = texts, expected, kinds
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.by_kind: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.refused = self.mismatches = self.done = 0

    def add(self, i: int, status: int | None, label: str | None, elapsed: float, error: str | None) -> int:
        """Record request ``i`` (of ``texts[i % len]``); returns how many requests are done."""
        n = i % len(self.texts)
        with self.lock:
            self.done += 1
            if status == 200:
                self.latencies.append(elapsed)
                if self.kinds is not None:
                    self.by_kind.setdefault(self.kinds[n], []).append(elapsed)
                if self.expected is not None and label != self.expected[n]:
                    self.mismatches += 1
            elif status == 429:  # refused at once by --max-concurrent-requests: back-pressure, not an error
                self.refused += 1
            else:
                self.errors.append((error or "")[:200])
            return self.done


def _post(client, url: str, text: str) -> tuple[int | None, str | None, float, str | None, float]:
    """One request: its status (None: no answer), label, seconds, error and ``Retry-After`` seconds (0: none)."""
    started = time.perf_counter()
    try:
        response = client.post(f"{url}/predict", json={"inputs": text})
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            retry = float(response.headers.get("retry-after", 0) or 0)
            return response.status_code, None, elapsed, f"HTTP {response.status_code}: {response.text}", retry
        return 200, response.json()[0]["label"], elapsed, None, 0.0
    except Exception as e:  # connection refused/reset, timeout, bad JSON: all count as errors
        return None, None, time.perf_counter() - started, f"{type(e).__name__}: {e}", 0.0


def send_load(
    url: str,
    texts: list[str],
    total: int,
    clients: int,
    max_seconds: float,
    server: Server,
    expected: list[str] | None = None,
    on_done=None,
    kinds: list[str] | None = None,
    backoff: bool = False,
) -> dict:
    """``clients`` threads post one text per request, cycling through ``texts``, ``total`` requests at most;
    with ``backoff`` a client answered 429 waits the answer's ``Retry-After`` before its next request.

    Returns latencies (s) of successful requests (and by ``kinds[i]``, the kind of ``texts[i]``, when
    given), error, refusal (429) and mismatch counts, and wall time.
    """
    import httpx

    counter = itertools.count()
    tally = _Tally(texts, expected, kinds)
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(limits=limits, timeout=REQUEST_TIMEOUT) as client:
            while time.monotonic() < deadline and server.alive():
                i = next(counter)  # itertools.count is atomic under the GIL
                if i >= total:
                    return
                *answer, retry_after = _post(client, url, texts[i % len(texts)])
                count = tally.add(i, *answer)
                if on_done is not None:
                    on_done(count)
                if backoff and answer[0] == 429:
                    time.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))

    threads = [threading.Thread(target=worker, name=f"client-{k}", daemon=True) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        # Bounded: each request has its own timeout, and no new one starts after the deadline.
        t.join(max_seconds + 2 * REQUEST_TIMEOUT)
    wall = time.perf_counter() - started
    return {
        "requests": tally.done,
        "ok": len(tally.latencies),
        "refused": tally.refused,
        "errors": len(tally.errors),
        "error_examples": sorted(set(tally.errors))[:5],
        "mismatches": tally.mismatches,
        "wall_seconds": wall,
        "latencies": tally.latencies,
        "latencies_by_kind": tally.by_kind,
        "stopped_by_time": time.monotonic() >= deadline and tally.done < total,
    }


def latency_summary(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    ms = np.asarray(latencies) * 1000
    return {
        f"{name}_ms": round(float(np.percentile(ms, q)), 1)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    } | {"mean_ms": round(float(ms.mean()), 1), "n": len(latencies)}


def batch_counters(client, url: str) -> dict:
    return client.get(f"{url}/info", timeout=10).json()["stats"]


def measure_load(
    server: Server, client, url: str, texts: list[str], expected: list[str], ns: argparse.Namespace, offline: dict
) -> dict:
    """The load phase: throughput, latency, errors, mismatches, batching and CPU use of both sides."""
    info = client.get(f"{url}/info", timeout=10).json()
    before = info["stats"]
    rss_before = _rss_mb(server.pid)
    if ns.duration is None:
        total, seconds = ns.requests, ns.max_seconds
        plan = f"{total} requests of one review each from {ns.clients} clients (at most {seconds:g} s)"
    else:
        total, seconds = sys.maxsize, ns.duration
        plan = f"one review per request from {ns.clients} clients for {seconds:g} s"
    print(f"load    : {plan} ...", flush=True)
    cpu_server, cpu_client = cpu_seconds(server.pid), _self_cpu()
    with _rss_sampler(server.pid) as samples:
        load = send_load(url, texts, total, ns.clients, seconds, server, expected, backoff=ns.backoff)
    cpu_server, cpu_client = cpu_seconds(server.pid) - cpu_server, _self_cpu() - cpu_client
    after = batch_counters(client, url)
    batches = after["batches"] - before["batches"]
    served_texts = after["texts"] - before["texts"]
    throughput = load["ok"] / load["wall_seconds"] if load["wall_seconds"] else 0.0
    return {
        "backend": info["backend"],
        "max_length": info["max_length"],
        "truncation": info["truncation"],
        "batching": info["batching"],
        "requests": load["requests"],
        "ok": load["ok"],
        "errors": load["errors"],
        "refused": load["refused"],
        "error_examples": load["error_examples"],
        "mismatches": load["mismatches"],
        "stopped_by_time": load["stopped_by_time"],
        "wall_seconds": round(load["wall_seconds"], 2),
        "reviews_per_second": round(throughput, 2),
        "ratio_to_offline": round(throughput / offline["reviews_per_second"], 3),
        "latency": latency_summary(load["latencies"]),
        "batches": batches,
        "mean_batch_size": round(served_texts / batches, 2) if batches else None,
        "largest_batch_ever": after["largest_batch"],
        "failed_batches": after["errors"] - before["errors"],
        "server_cpu_seconds": round(cpu_server, 1),
        "client_cpu_seconds": round(cpu_client, 1),
        "server_rss_mb_before": rss_before,
        "server_rss_mb_after": _rss_mb(server.pid),
        "server_peak_rss_mb": round(proc_status(server.pid).get("VmHWM", 0) / 1024, 1),
        "server_rss_mb_samples": samples,
        "server_rss_growth_after_warm": _growth_after(samples, RSS_WARM_SECONDS),
    }


RSS_EVERY_SECONDS = 2.0
RSS_WARM_SECONDS = 10.0
"""The server's memory grows to its largest batch's shape in the first seconds under load (ONNX Runtime's and
the allocator's arenas); growth is read from the first sample after this many seconds to the last."""


@contextlib.contextmanager
def _rss_sampler(pid: int):
    """Samples ``(seconds, RSS MB)`` of ``pid`` every :data:`RSS_EVERY_SECONDS` while the block runs."""
    samples: list[tuple[float, float | None]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while True:
            samples.append((round(time.monotonic() - started, 1), _rss_mb(pid)))
            if stop.wait(RSS_EVERY_SECONDS):
                return

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(5)
        samples.append((round(time.monotonic() - started, 1), _rss_mb(pid)))


def _growth_after(samples: list[tuple[float, float | None]], warm: float) -> float | None:
    """RSS growth (a share) from the first sample at or after ``warm`` seconds to the last one."""
    later = [mb for t, mb in samples if t >= warm and mb is not None]
    return round(later[-1] / later[0] - 1, 4) if len(later) >= 2 else None


def rss_phase(url: str, texts: list[str], ns: argparse.Namespace, server: Server) -> dict:
    """Server RSS before, every ``--rss-every`` requests and after ``--rss-requests`` short-text requests."""
    short = [t[: ns.rss_chars] for t in texts]
    samples = [{"requests": 0, "rss_mb": _rss_mb(server.pid)}]
    lock = threading.Lock()

    def on_done(count: int) -> None:
        if count % ns.rss_every == 0:
            rss = _rss_mb(server.pid)
            with lock:
                samples.append({"requests": count, "rss_mb": rss})

    result = send_load(url, short, ns.rss_requests, ns.clients, ns.max_seconds, server, on_done=on_done)
    samples.sort(key=lambda s: s["requests"])
    end = {"requests": result["requests"], "rss_mb": _rss_mb(server.pid)}
    if samples[-1]["requests"] != end["requests"]:
        samples.append(end)
    time.sleep(2)  # idle: anything the server was about to free is freed
    after = _rss_mb(server.pid)
    return {
        "requests": result["requests"],
        "errors": result["errors"],
        "text_chars": ns.rss_chars,
        "wall_seconds": round(result["wall_seconds"], 1),
        "samples": samples,
        "rss_after_idle_mb": after,
        "growth_mb": round(after - samples[0]["rss_mb"], 1) if after and samples[0]["rss_mb"] else None,
        "peak_rss_mb": round(proc_status(server.pid).get("VmHWM", 0) / 1024, 1),
        "stopped_by_time": result["stopped_by_time"],
    }


def one_liners(texts: list[str], max_words: int) -> list[str]:
    """Each review's first sentence (its HTML line breaks dropped), at most ``max_words`` words."""
    lines = []
    for text in texts:
        first = re.split(r"(?<=[.!?])\s+", text.replace("<br />", " ").strip(), maxsplit=1)[0]
        lines.append(" ".join(first.split()[:max_words]) or text[:80])
    return lines


def long_reviews(texts: list[str], words: int, count: int) -> list[str]:
    """``count`` reviews of exactly ``words`` words: the test reviews' words run together, in turn."""
    pool = " ".join(t.replace("<br />", " ") for t in texts).split()
    if not pool:
        raise LoadError("no words in the reviews to build long ones from")
    return [" ".join(pool[(k * words + j) % len(pool)] for j in range(words)) for k in range(count)]


def mixed_texts(short: list[str], long: list[str], share: float) -> tuple[list[str], list[str]]:
    """``short`` with every ``round(1 / share)``-th text a long one instead, and each text's kind."""
    every = max(1, round(1 / share))
    texts, kinds, used = [], [], itertools.cycle(long)
    for i, text in enumerate(short):
        is_long = i % every == every - 1
        texts.append(next(used) if is_long else text)
        kinds.append("long" if is_long else "short")
    return texts, kinds


def mix_phase(url: str, texts: list[str], ns: argparse.Namespace, server: Server) -> dict:
    """The one-line reviews' latency alone, then beside a share ``--mix`` of ``--long-words``-word reviews."""
    short = one_liners(texts, ns.short_words)
    mixed, kinds = mixed_texts(short, long_reviews(texts, ns.long_words, max(1, len(texts) // 10)), ns.mix)
    seconds = ns.mix_seconds
    print(f"mix     : one-line reviews only, {ns.clients} clients for {seconds:g} s ...", flush=True)
    alone = send_load(url, short, sys.maxsize, ns.clients, seconds, server)
    print(f"mix     : {ns.mix:.0%} {ns.long_words}-word reviews among them, {seconds:g} s ...", flush=True)
    beside = send_load(url, mixed, sys.maxsize, ns.clients, seconds, server, kinds=kinds)
    alone_lat = latency_summary(alone["latencies"])
    beside_short = latency_summary(beside["latencies_by_kind"].get("short", []))
    ratio = beside_short.get("p99_ms", float("nan")) / alone_lat.get("p99_ms", float("nan"))
    return {
        "long_share": ns.mix,
        "long_words": ns.long_words,
        "short_words": ns.short_words,
        "seconds": seconds,
        "alone": {k: alone[k] for k in ("requests", "ok", "refused", "errors")} | {"short_latency": alone_lat},
        "beside": {k: beside[k] for k in ("requests", "ok", "refused", "errors")}
        | {
            "short_latency": beside_short,
            "long_latency": latency_summary(beside["latencies_by_kind"].get("long", [])),
        },
        "short_p99_ratio": round(ratio, 3),
        "error_examples": (alone["error_examples"] + beside["error_examples"])[:5],
    }


def _rss_mb(pid: int) -> float | None:
    rss = proc_status(pid).get("VmRSS")
    return round(rss / 1024, 1) if rss else None


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder to serve (PyTorch or ONNX)")
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--n", type=int, default=2000, help="test reviews (stratified, seeded subset)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    parser.add_argument("--requests", type=int, help="requests of the load phase (default: 2 x N)")
    parser.add_argument("--max-seconds", type=float, default=300, help="time limit of each load phase")
    parser.add_argument(
        "--duration",
        type=float,
        help="load for this many seconds, however many requests that is (instead of --requests)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="offline batch size and server --max-batch-size")
    parser.add_argument("--max-wait-ms", type=float, help="server micro-batching wait (default: the server's)")
    parser.add_argument("--max-batch-tokens", type=int, help="server --max-batch-tokens (default: the server's)")
    parser.add_argument(
        "--max-concurrent-requests", type=int, help="server --max-concurrent-requests (default: the server's)"
    )
    parser.add_argument(
        "--backoff",
        action="store_true",
        help="a client answered 429 waits its Retry-After before the next request (default: retries at once)",
    )
    parser.add_argument("--threads", type=int, help=f"intra-op threads (default: ${THREADS_ENV} or cores)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=128,
        help="texts classified before timing, offline and by the server (enough for full batches: the server's "
        "memory has grown to a full batch before its RSS is first read)",
    )
    parser.add_argument("--startup-timeout", type=float, default=180)
    parser.add_argument("--seed", type=int, default=42)
    g = parser.add_argument_group("server memory")
    g.add_argument("--rss-requests", type=int, default=0, help="short-text requests while sampling RSS (0: skip)")
    g.add_argument("--rss-every", type=int, default=1000, help="sample every this many requests")
    g.add_argument("--rss-chars", type=int, default=120, help="characters kept of each review (short texts)")
    g = parser.add_argument_group("long reviews beside one-line ones")
    g.add_argument("--mix", type=float, help="share of long reviews (e.g. 0.1) in the mix phase (default: skip it)")
    g.add_argument("--mix-seconds", type=float, help="seconds of each mix phase (default: --duration, else 60)")
    g.add_argument("--long-words", type=int, default=2000, help="words of each long review")
    g.add_argument("--short-words", type=int, default=25, help="most words of a one-line review")
    parser.add_argument("--json", help="also write every figure and setting here")
    ns = parser.parse_args(argv)
    for name in ("n", "clients", "batch_size", "warmup", "rss_every", "rss_chars", "long_words", "short_words"):
        if getattr(ns, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if ns.requests is not None and ns.requests < 1:
        parser.error("--requests must be >= 1")
    if ns.rss_requests < 0 or not ns.max_seconds > 0:
        parser.error("--rss-requests must be >= 0 and --max-seconds > 0")
    if ns.duration is not None and not ns.duration > 0:
        parser.error("--duration must be > 0 seconds")
    if ns.mix is not None and not 0 < ns.mix < 1:
        parser.error("--mix must be a share in (0, 1), e.g. 0.1")
    ns.mix_seconds = ns.mix_seconds or ns.duration or 60.0
    if not ns.mix_seconds > 0:
        parser.error("--mix-seconds must be > 0")
    ns.requests = ns.requests or 2 * ns.n
    return ns


def main(argv: list[str] | None = None) -> int:
    import httpx

    ns = parse_args(argv)
    threads = ns.threads or resolve_threads(None)
    results: dict = {
        "settings": vars(ns).copy(),
        "machine": machine_info(httpx=_httpx_version()),
        "threads": set_threads(threads),
    }
    m, t = results["machine"], results["threads"]
    print(
        f"machine : {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs ({m['physical_cores']} physical cores), "
        f"load average {m['load_average']}"
    )
    print(
        f"versions: torch {m['torch']}, transformers {m['transformers']}, onnxruntime {m['onnxruntime']}, "
        f"httpx {m['httpx']}, python {m['python']}"
    )
    print(
        f"threads : torch intra-op {t['torch_intra_op']}, inter-op {t['torch_inter_op']} (offline and server "
        f"--threads); ONNX Runtime intra-op {threads} (via {THREADS_ENV}); {ns.clients} client threads"
    )
    texts = load_reviews(ns.data, ns.n, ns.seed)
    print(f"data    : {len(texts)} test reviews of {ns.data} (seed {ns.seed})")

    print("offline : Predictor.predict_proba ...", flush=True)
    offline, expected = offline_baseline(ns.model, texts, ns.batch_size, ns.warmup)
    results["offline"] = offline
    print(
        f"offline : {offline['reviews_per_second']:.1f} reviews/s ({offline['backend']}, {offline['threads']} threads, "
        f"batch {ns.batch_size}, {offline['max_length']} tokens, {offline['truncation']})"
    )

    extra = ["--max-batch-size", str(ns.batch_size)]
    for flag in ("max_wait_ms", "max_batch_tokens", "max_concurrent_requests"):
        if getattr(ns, flag) is not None:
            extra += [f"--{flag.replace('_', '-')}", str(getattr(ns, flag))]
    if ns.mix is not None:
        extra += ["--max-chars", str(max(20_000, 20 * ns.long_words))]  # a long review must fit
    with tempfile.TemporaryDirectory(prefix="bertsent-serve-") as tmp:
        server = Server(ns.model, threads, extra, Path(tmp) / "server.log")
        try:
            with httpx.Client(timeout=30) as client:
                url = server.wait_ready(client, ns.startup_timeout)
                print(f"server  : pid {server.pid} at {url} ({' '.join(server.cmd[1:])})", flush=True)
                # Warm-up: a few batches, so the first timed requests do not pay for lazy initialisation.
                # Within the concurrency limit, so that every warm-up request is served (none refused).
                warm_clients = min(ns.clients, ns.max_concurrent_requests or ns.clients)
                warm = send_load(url, texts[: ns.warmup], ns.warmup, warm_clients, ns.max_seconds, server)
                if warm["errors"]:
                    raise LoadError(f"warm-up requests failed: {warm['error_examples'][0]}")
                results["server"] = measure_load(server, client, url, texts, expected, ns, offline)
                if ns.rss_requests:
                    print(f"memory  : {ns.rss_requests} requests of {ns.rss_chars}-character texts ...", flush=True)
                    results["server_memory"] = rss_phase(url, texts, ns, server)
                if ns.mix is not None:
                    results["mix"] = mix_phase(url, texts, ns, server)
        finally:
            code = server.stop()
            log_lines = server.log.read_text(errors="replace").splitlines()
            results["server_exit"] = {
                "returncode": code,
                "summary": next((line for line in reversed(log_lines) if line.startswith("served ")), None),
            }

    print_report(results)
    if "mix" in results:
        print_mix(results["mix"])
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
        print(f"\nresults written to {ns.json}")
    return 0


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_report(results: dict) -> None:
    s, o = results["server"], results["offline"]
    lat = s["latency"]
    print()
    print(f"{'':<26} {'reviews/s':>10} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'mismatches':>11}")
    print(
        f"{'offline predict_proba':<26} {o['reviews_per_second']:>10.1f} {1.0:>7.2f} {'':>8} {'':>8} {'':>7} {'':>11}"
    )
    print(
        f"{'bertsent serve':<26} {s['reviews_per_second']:>10.1f} {s['ratio_to_offline']:>7.2f} "
        f"{lat.get('p50_ms', float('nan')):>8.1f} {lat.get('p99_ms', float('nan')):>8.1f} {s['errors']:>7} "
        f"{s['mismatches']:>11}"
    )
    duration = results["settings"].get("duration")
    stopped = " (stopped by --max-seconds)" if s["stopped_by_time"] else ""
    stopped = f" (--duration {duration:g})" if duration else stopped
    print(
        f"\nserver: {s['ok']}/{s['requests']} requests in {s['wall_seconds']:.1f} s{stopped}; "
        f"{s['batches']} batches, mean "
        f"{s['mean_batch_size']} texts (max {s['batching']['max_batch_size']}, "
        f"wait {s['batching']['max_wait_ms']} ms); "
        f"CPU seconds: server {s['server_cpu_seconds']}, load generator {s['client_cpu_seconds']}"
    )
    print(
        f"server RSS: {s['server_rss_mb_before']} MB at the start of the load, {s['server_rss_mb_after']} MB at "
        f"the end (peak {s['server_peak_rss_mb']} MB); latency p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, "
        f"max {lat.get('max_ms')} ms; {s['errors']} errors"
    )
    growth = s["server_rss_growth_after_warm"]
    if growth is not None:
        by_time = ", ".join(
            f"{t:g} s {mb}" for t, mb in s["server_rss_mb_samples"][:: max(1, len(s["server_rss_mb_samples"]) // 8)]
        )
        print(f"server RSS (MB) over the load: {by_time}; growth after the first {RSS_WARM_SECONDS:g} s: {growth:+.1%}")
    if s["refused"]:
        print(f"refused: {s['refused']} requests answered 429 (--max-concurrent-requests reached)")
    if s["error_examples"]:
        print(f"errors, e.g.: {s['error_examples'][0]}")
    met = s["ratio_to_offline"] >= GOAL_RATIO and s["errors"] == 0
    print(
        f"goals : {s['ratio_to_offline']:.0%} of offline throughput (goal >= {GOAL_RATIO:.0%}), "
        f"{s['errors']} errors (goal 0), "
        f"{s['mismatches']} answers differ from offline: {'met' if met else 'NOT met'}"
    )
    results["goals_met"] = met
    mem = results.get("server_memory")
    if mem:
        points = ", ".join(f"{p['requests']}: {p['rss_mb']}" for p in mem["samples"])
        print(
            f"server RSS (MB) by requests served: {points}; {mem['rss_after_idle_mb']} after 2 s idle "
            f"(growth {mem['growth_mb']} MB, peak {mem['peak_rss_mb']} MB, {mem['errors']} errors)"
        )
    print(f"server exit: {results['server_exit']}")


def print_mix(mix: dict) -> None:
    """The one-line reviews' latency without and beside the long reviews, and the goal."""
    alone, beside = mix["alone"], mix["beside"]
    print(f"\none-line reviews ({mix['short_words']} words at most), {mix['seconds']:g} s per phase:")
    print(f"{'':<34} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'429':>5} {'errors':>7}")
    rows = (
        ("alone", alone, alone["short_latency"]),
        (f"beside {mix['long_share']:.0%} of {mix['long_words']} words", beside, beside["short_latency"]),
        ("  (the long reviews)", beside, beside["long_latency"]),
    )
    for name, phase, lat in rows:  # requests: the answered ones of that kind
        print(
            f"{name:<34} {lat.get('n', 0):>9} {lat.get('p50_ms', float('nan')):>8.1f} "
            f"{lat.get('p99_ms', float('nan')):>8.1f} {phase['refused']:>5} {phase['errors']:>7}"
        )
    if mix["error_examples"]:
        print(f"errors, e.g.: {mix['error_examples'][0]}")
    ratio = mix["short_p99_ratio"]
    met = ratio <= GOAL_MIX_P99 and alone["errors"] == beside["errors"] == 0
    print(
        f"goal  : one-line p99 beside the long reviews {ratio:.2f}x their p99 alone "
        f"(goal <= {GOAL_MIX_P99:g}x, 0 errors): {'met' if met else 'NOT met'}"
    )
    mix["goal_met"] = met


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BertsentError, ValueError) as e:
        print(f"serve load benchmark: error: {e}", file=sys.stderr)
        sys.exit(2)
