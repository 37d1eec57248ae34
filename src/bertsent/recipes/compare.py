"""The trade-off table: size, accuracy and speed of several model folders, measured in one run.

Every folder is scored on the same reviews, on the same machine, in the same process, one after the
other: parameters and size on disk (from the files), accuracy/F1 (batch predictions), throughput at
batch size 32 and latency at batch size 1 (p50/p95), both end to end including tokenization. The first
folder is the reference for the ratios.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bertsent.config import CompareConfig
from bertsent.data.loading import load_data
from bertsent.folder import git_revision, weight_files, weights_bytes, write_json_whole
from bertsent.runtime import cpu_summary

log = logging.getLogger(__name__)


def count_parameters(folder: Path) -> int:
    """Weights stored in the folder's files (safetensors tensors, ONNX initializers or OpenVINO constants),
    whatever the backend.

    For INT8 ONNX graphs this counts the quantized weights plus their scales and zero points.
    """
    total = 0
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    total += int(np.prod(f.get_slice(key).get_shape()))
        elif path.suffix == ".onnx":
            import onnx

            graph = onnx.load(path, load_external_data=False).graph
            total += sum(int(np.prod(t.dims)) for t in graph.initializer)
        elif path.suffix == ".xml":  # OpenVINO IR: its constants (INT8 ones with their scales and zero points)
            from bertsent.runtime import require_openvino

            model = require_openvino().Core().read_model(str(path))
            shapes = [list(op.get_output_shape(0)) for op in model.get_ops() if op.get_type_name() == "Constant"]
            total += sum(int(np.prod(shape)) for shape in shapes if shape)
    return total


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    folder: Path,
    texts: list[str],
    labels: np.ndarray,
    config: CompareConfig,
    *,
    settings=None,
    speed_samples: int | None = None,
    store: Path | None = None,
) -> dict:
    """One row of the table for ``folder``, run with ``settings`` (default: ``config.resolved_inference()``).

    Accuracy is on every text; with ``speed_samples`` the throughput is timed on the first that many
    (the same sample for every row), else on the accuracy run itself. With a ``store`` folder the
    predictions are kept there and reused (:func:`stored_probs`): a folder is scored once per content,
    route and settings, and only its speed is timed again."""
    from bertsent.metrics import classification_metrics
    from bertsent.predict import Predictor

    predictor = Predictor(folder, settings or config.resolved_inference())
    predictor.predict_proba(texts[: predictor.batch_size])  # warm-up: first-call allocations, lazy inits
    probs, mean_layers = stored_probs(predictor, texts, store) if store or speed_samples else (None, None)
    timed = texts if probs is None else texts[:speed_samples]
    predictor.backend.reset_exit_counts()  # early exit: count the timed run's layers only

    def run() -> None:
        nonlocal probs
        out = predictor.predict_proba(timed, progress=None)  # a bar on a terminal: the long measurement
        probs = out if probs is None else probs

    seconds = _timed(run)
    mean_layers = predictor.backend.mean_layers if mean_layers is None else mean_layers
    metrics = classification_metrics(labels, probs, predictor.id2label)
    latencies = [_timed(lambda t=t: predictor.predict_proba([t])) for t in texts[: config.latency_samples]]
    row = {
        "model": str(folder),
        "backend": predictor.backend.name,
        # What the backend actually ran: precision "auto" may pick bf16 (AMX, and accepted against fp32).
        "precision": predictor.backend.precision,
        # The route and why: --backend auto may run a PyTorch folder with ONNX Runtime or OpenVINO.
        "route": predictor.route.name,
        "route_reason": predictor.route.reason,
        "parameters": count_parameters(folder),
        "size_mb": round(weights_bytes(folder) / 1e6, 2),
        "accuracy": round(metrics["accuracy"], 4),
        "f1": round(metrics["f1"], 4),
        "roc_auc": round(metrics.get("roc_auc", float("nan")), 4),
        "throughput": round(len(timed) / seconds, 2),
        "latency_p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
        "latency_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 2),
        "max_length": predictor.max_length,
        "reviews": len(texts),
    } | ({"mean_layers": round(mean_layers, 4)} if mean_layers is not None else {})
    return row | ({"speed_reviews": len(timed)} if len(timed) != len(texts) else {})


STORE_DIR = "predictions"
"""Where a comparison keeps each row's predictions (``<key>.npy`` and ``<key>.json``)."""


def store_key(predictor, texts: list[str]) -> str:
    """What a row's predictions depend on: the folder's files (:func:`_fingerprint`), the route and
    precision that run it, the resolved inference settings and the texts."""
    import hashlib

    backend = predictor.backend
    parts = {
        "files": _fingerprint(predictor.model_dir),
        "route": [backend.name, backend.precision],
        "settings": json.loads(json.dumps(asdict(predictor.settings), default=str)),
        "texts": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def stored_probs(predictor, texts: list[str], store: Path | None) -> tuple[np.ndarray, float | None]:
    """``predictor``'s probabilities on ``texts`` and the mean early-exit layers of that run (None: every
    layer), from ``store`` when it holds them, else computed once (and kept there, when given)."""
    key = store_key(predictor, texts)
    npy, meta = (store / f"{key}.npy", store / f"{key}.json") if store else (None, None)
    if npy is not None and npy.is_file() and meta.is_file():
        log.info("%s: predictions on %d reviews from %s", predictor.model_dir, len(texts), npy)
        return np.load(npy), json.loads(meta.read_text()).get("mean_layers")
    predictor.backend.reset_exit_counts()
    probs = predictor.predict_proba(texts, progress=None)
    mean_layers = predictor.backend.mean_layers
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)
        np.save(npy, probs)
        write_json_whole(meta, {"model": str(predictor.model_dir), "reviews": len(texts), "mean_layers": mean_layers})
    return probs, mean_layers


PARTIAL_FILE = "rows.partial.json"
"""The rows measured so far, written after each one: the comparison takes hours at full scale on a CPU,
and a run killed halfway keeps them for the next run of the same settings on the same CPU."""


def compare(
    config: CompareConfig, *, reference=None, speed_samples: int | None = None, store: bool = False
) -> list[dict]:
    """Measure every folder; writes ``compare.json``, ``compare.md`` and ``pareto.png`` to ``output_dir``.

    ``reference`` (InferenceSettings) runs the first folder, the ratios' reference, another way (the
    recipes: PyTorch fp32); ``speed_samples`` and ``store`` (predictions kept in ``output_dir/predictions``
    and reused) are :func:`measure`'s.

    Every folder runs with ``config.resolved_inference()`` (threads included: each backend applies them).
    A row an interrupted run measured is kept when the settings, the CPU and the folder's files are the
    same; ``compare.json`` then names it and its date (``measured["earlier_rows"]``).
    """
    frame = getattr(load_data(config.data, splits=(config.split,)), config.split)
    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    out = Path(config.output_dir) if config.output_dir else None
    partial = _Partial(out / PARTIAL_FILE if out else None, _settings(config))
    rows = []
    for i, folder in enumerate(config.models):
        name = config.names[i] if config.names else Path(folder).name
        row = partial.kept(name, Path(folder))
        if row is None:
            log.info("measuring %s on %d %s reviews", folder, len(texts), config.split)
            keep = out / STORE_DIR if store and out else None
            ran = reference if i == 0 and reference is not None else None
            row = {"name": name} | measure(
                Path(folder), texts, labels, config, settings=ran, speed_samples=speed_samples, store=keep
            )
            partial.add(row, Path(folder))
        rows.append(row)
        log.info("%s", row)
    reference = rows[0]
    for row in rows:
        row["size_ratio"] = round(row["size_mb"] / reference["size_mb"], 3) if reference["size_mb"] else None
        row["speedup"] = round(row["throughput"] / reference["throughput"], 2)
        row["accuracy_delta_points"] = round(100 * (row["accuracy"] - reference["accuracy"]), 2)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        # When and at which revision: a page re-rendered later from these rows must not pass for a new run.
        measured = {"date": _today(), "git": git_revision()} | (
            {"earlier_rows": partial.earlier} if partial.earlier else {}
        )
        # The CPU's AMX/AVX-512 flags decide which backend and precision win: a table means little without them.
        record = {"settings": partial.settings, "measured": measured, "cpu": partial.cpu, "rows": rows}
        (out / "compare.json").write_text(json.dumps(record, indent=2))
        (out / "compare.md").write_text(markdown_table(rows))
        plot_pareto(rows, out / "pareto.png")
        partial.done()
    return rows


def _today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def _settings(config: CompareConfig) -> dict:
    # Through JSON, so tuples and lists compare equal with what a file holds.
    return json.loads(json.dumps(asdict(config) | {"data": asdict(config.data)}))


def _fingerprint(folder: Path) -> list:
    """The folder's weight and config files by name, size and modification time: a rebuilt folder differs."""
    files = [*weight_files(folder), folder / "config.json"]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(files) if p.is_file()]


class _Partial:
    """The rows measured so far (``path`` None: not kept), and those an interrupted earlier run left."""

    def __init__(self, path: Path | None, settings: dict) -> None:
        self.path, self.settings, self.cpu = path, settings, cpu_summary()
        self.entries: list[dict] = []
        self.earlier: dict[str, str] = {}  # row name -> the date it was measured, for rows kept
        stored = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        same = stored.get("settings") == settings and stored.get("cpu") == self.cpu
        if stored and not same:
            log.info("%s: left by a run with other settings or on another CPU; measuring every row again", path)
        self.stored = {e["row"]["name"]: e for e in stored.get("entries", [])} if same else {}

    def kept(self, name: str, folder: Path) -> dict | None:
        entry = self.stored.get(name)
        if entry is None or entry["row"]["model"] != str(folder) or entry["files"] != _fingerprint(folder):
            return None
        log.info("%s: kept the row an interrupted run measured on %s", name, entry["date"])
        self.earlier[name] = entry["date"]
        self._keep(entry)
        return dict(entry["row"])

    def add(self, row: dict, folder: Path) -> None:
        self._keep({"row": dict(row), "files": _fingerprint(folder), "date": _today()})

    def _keep(self, entry: dict) -> None:
        self.entries.append(entry)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            record = {"settings": self.settings, "cpu": self.cpu, "entries": self.entries}
            write_json_whole(self.path, record)

    def done(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def previous_rows(config: CompareConfig) -> list[dict] | None:
    """The rows ``output_dir`` already holds when they were measured with exactly these settings, else None
    (lets a recipe that reruns to add a stage skip an hour-long comparison it has done)."""
    if not config.output_dir or not (Path(config.output_dir) / "compare.json").is_file():
        return None
    try:
        stored = json.loads((Path(config.output_dir) / "compare.json").read_text())
    except ValueError:
        return None
    return stored["rows"] if stored.get("settings") == _settings(config) else None


def _backend(row: dict) -> str:
    """The backend, with its precision when it ran a reduced one (``pytorch bf16``)."""
    precision = row.get("precision")
    return f"{row['backend']} {precision}" if precision in ("bf16", "fp16") else row["backend"]


def cpu_line(cpu: dict | None) -> str:
    """One sentence naming the CPU a table was measured on and its relevant instruction sets."""
    if not cpu:
        return ""
    return (
        f"Measured on {cpu.get('model_name') or 'an unnamed CPU'} ({cpu.get('physical_cores')} physical cores; "
        f"{cpu.get('features')}).\n"
    )


def markdown_table(rows: list[dict]) -> str:
    """The table as Markdown, ratios against the first row."""
    head = (
        "| Model | Backend | Parameters | Size (MB) | Accuracy | F1 | ROC-AUC | Reviews/s (batch 32) "
        "| p50 / p95 ms (batch 1) | Size ratio | Speed-up | Δ accuracy (points) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['name']} | {_backend(r)} | {r['parameters']:,} | {r['size_mb']:.1f} | {r['accuracy']:.4f} | "
        f"{r['f1']:.4f} | {r['roc_auc']:.4f} | {r['throughput']:.1f} | "
        f"{r['latency_p50_ms']:.0f} / {r['latency_p95_ms']:.0f} | "
        f"{r['size_ratio']} | {r['speedup']:.2f}× | {r['accuracy_delta_points']:+.2f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def fastest_within(rows: list[dict], max_drop_points: float) -> dict | None:
    """The fastest variant (any row after the first, the reference) that loses at most ``max_drop_points``
    of accuracy against the reference; None when none does."""
    eligible = [r for r in rows[1:] if r["accuracy_delta_points"] >= -max_drop_points]
    return max(eligible, key=lambda r: r["throughput"], default=None)


def smallest_within(rows: list[dict], max_drop_points: float) -> dict | None:
    """The smallest variant on disk (any row after the first) within ``max_drop_points`` of the reference."""
    eligible = [r for r in rows[1:] if r["accuracy_delta_points"] >= -max_drop_points]
    return min(eligible, key=lambda r: r["size_mb"], default=None)


def trade_off_line(rows: list[dict], max_drop_points: float) -> str:
    """Two sentences: the fastest and the smallest variant within the accuracy budget, with speed-up and size."""
    best, smallest = fastest_within(rows, max_drop_points), smallest_within(rows, max_drop_points)
    if best is None:
        return f"No variant stays within {max_drop_points:g} accuracy points of {rows[0]['name']}.\n"
    return (
        f"Fastest variant within {max_drop_points:g} accuracy points of {rows[0]['name']}: **{best['name']}**, "
        f"{best['accuracy_delta_points']:+.2f} points, {best['speedup']:.2f}× the throughput, "
        f"{best['size_mb']:.1f} MB ({best['size_ratio']} of the size)"
        + (
            ", also the smallest within that budget.\n"
            if smallest is best
            else f". Smallest within that budget: **{smallest['name']}**, {smallest['size_mb']:.1f} MB, "
            f"{smallest['accuracy_delta_points']:+.2f} points, {smallest['speedup']:.2f}× the throughput.\n"
        )
    )


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both accuracy and throughput, fastest first."""
    front = [
        r
        for r in rows
        if not any(
            o["accuracy"] >= r["accuracy"]
            and o["throughput"] >= r["throughput"]
            and (o["accuracy"], o["throughput"]) != (r["accuracy"], r["throughput"])
            for o in rows
        )
    ]
    return sorted(front, key=lambda r: r["throughput"])


def plot_pareto(rows: list[dict], path: Path) -> Path:
    """Accuracy against throughput, the Pareto front joined by a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bertsent.metrics import save_figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([r["throughput"] for r in rows], [100 * r["accuracy"] for r in rows], s=40)
    for r in rows:
        ax.annotate(
            f"{r['name']} ({r['size_mb']:.0f} MB)",
            (r["throughput"], 100 * r["accuracy"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = pareto_front(rows)
    ax.plot(
        [r["throughput"] for r in front],
        [100 * r["accuracy"] for r in front],
        "--",
        color="tab:red",
        label="Pareto front",
    )
    ax.set_xlabel("reviews/s (batch 32, end to end)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
