"""PyTorch vs Keras backends, measured in one run: training, validation accuracy, SavedModel prediction.

Both backends fine-tune the embedded all-MiniLM-L6-v2 on the same IMDB training reviews (1 epoch,
256 tokens, head+tail truncation, same learning rate, batch size and seed) and are scored on the same
validation reviews. One epoch on 1,000 reviews is ~63 steps, so the data order alone moves accuracy
by points: each backend is trained once per seed (``--seeds``; each seed also draws its own subset),
and the accuracy comparison is of the means over seeds. Then the first seed's PyTorch-trained folder
is exported as a TensorFlow SavedModel (with the raw-text signature), and the SavedModel's prediction
speed is measured against the PyTorch fp32 ``Predictor`` on the same test reviews, tokenization
included.

Each contender runs in its own process, so only one framework is busy at a time. Threads are set
deliberately: torch ``--threads`` intra-op and 1 inter-op; TensorFlow ``--threads`` intra-op and 1
inter-op (bertsent.keras_model.require_keras).

    python benchmarks/keras_backends.py --data ../shared/data/imdb --train 1000 --validation 500 --test 1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_info, restore_sigint

from bertsent.runtime import resolve_threads


def run(cmd: list[str], log: Path) -> float:
    """Run a command (output to ``log``); returns wall seconds, or exits with its log's tail on failure."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=restore_sigint)
    if code:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({code}):\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return time.perf_counter() - start


def worker_json(args: list[str], log: Path) -> dict:
    run([sys.executable, __file__, "--worker", *args], log)
    return json.loads(log.read_text().strip().splitlines()[-1])


def test_reviews(data: str, n: int, seed: int):
    from bertsent.config import DataConfig
    from bertsent.data.loading import load_data

    splits = load_data(DataConfig(data, eval_samples=n, seed=seed, validation_size=0.01))
    return splits.test["text"].tolist(), splits.test["label"].to_numpy()


def predict_torch(folder: str, ns: argparse.Namespace) -> dict:
    """bertsent's fp32 Predictor: length-sorted batches, tokenization included in the time."""
    import torch

    from bertsent.predict import Predictor

    torch.set_num_threads(ns.threads)
    torch.set_num_interop_threads(1)
    texts, labels = test_reviews(ns.data, ns.test, ns.seed)
    predictor = Predictor(folder, batch_size=ns.batch_size, max_length=ns.max_length, truncation="head+tail")
    predictor(texts[:32])  # warm-up
    start = time.perf_counter()
    out = predictor(texts)
    seconds = time.perf_counter() - start
    names = {name: i for i, name in predictor.id2label.items()}
    predicted = np.array([names[o["label"]] for o in out])
    return {"seconds": seconds, "predicted": predicted.tolist(), "accuracy": float(np.mean(predicted == labels))}


def predict_savedmodel(folder: str, ns: argparse.Namespace, strings: bool) -> dict:
    """The SavedModel: HF tokenization + the token-id signature, or the raw-text signature alone."""
    from bertsent.keras.model import require_keras

    require_keras(ns.threads)
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the string signature's tokenizer ops)

    from bertsent.encoding import collate, encode
    from bertsent.modeling.loading import load_tokenizer

    texts, labels = test_reviews(ns.data, ns.test, ns.seed)
    model = tf.saved_model.load(str(Path(folder) / "saved_model"))
    tokenizer = load_tokenizer(folder)

    def classify(batch_texts: list[str]) -> np.ndarray:
        if strings:
            return model.signatures["serving_strings"](text=tf.constant(batch_texts))["logits"].numpy()
        enc = encode(tokenizer, batch_texts, ns.max_length, "head+tail")
        b = collate(enc, np.arange(len(enc)), tokenizer.pad_token_id or 0)
        ids, mask = (tf.constant(b[k], tf.int32) for k in ("input_ids", "attention_mask"))
        return model.signatures["serving_default"](input_ids=ids, attention_mask=mask)["logits"].numpy()

    # Same batching as the Predictor: length-sorted (by characters: no tokenizer outside the graph).
    order = np.argsort([len(t) for t in texts], kind="stable")
    for i in range(0, min(4 * ns.batch_size, len(texts)), ns.batch_size):  # warm-up: traces a few shapes
        classify([texts[j] for j in order[i : i + ns.batch_size]])
    predicted = np.empty(len(texts), dtype=np.int64)
    start = time.perf_counter()
    for i in range(0, len(texts), ns.batch_size):
        idx = order[i : i + ns.batch_size]
        predicted[idx] = classify([texts[j] for j in idx]).argmax(-1)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "predicted": predicted.tolist(), "accuracy": float(np.mean(predicted == labels))}


def train_command(backend: str, out: Path, ns: argparse.Namespace, seed: int) -> list[str]:
    return [
        *(sys.executable, "-m", "bertsent", "train", "--backend", backend, "--data", ns.data),
        *("--output-dir", str(out), "--train-samples", str(ns.train), "--validation-size", str(ns.validation)),
        *("--epochs", "1", "--max-length", str(ns.max_length), "--truncation", "head+tail"),
        *("--lr", str(ns.lr), "--batch-size", "16", "--seed", str(seed), "--threads", str(ns.threads)),
        "--skip-test",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/imdb")
    parser.add_argument("--train", type=int, default=1000, help="training reviews")
    parser.add_argument("--validation", type=int, default=500, help="validation reviews (carved from train)")
    parser.add_argument("--test", type=int, default=1000, help="test reviews for the prediction speed")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32, help="prediction batch size")
    parser.add_argument("--threads", type=int, default=resolve_threads(None), help="intra-op threads, both frameworks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="training runs per backend")
    parser.add_argument("--seed", type=int, default=42, help="test subset for the prediction speed")
    parser.add_argument("--json", help="also write every figure and setting here")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)

    if ns.worker:  # one contender, in its own process; prints one JSON line
        kind, folder = ns.worker
        result = predict_torch(folder, ns) if kind == "torch" else predict_savedmodel(folder, ns, kind == "strings")
        print(json.dumps(result))
        return 0

    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['cpus_available']} CPUs), load {machine['load_average']}")
    print(f"threads: {ns.threads} intra-op, 1 inter-op in each framework; one framework busy at a time")
    results: dict = {"settings": vars(ns), "machine": machine, "train": {}, "predict": {}}
    with tempfile.TemporaryDirectory(prefix="bertsent-keras-bench-") as tmp:
        root = Path(tmp)
        for seed in ns.seeds:
            for backend in ("torch", "keras"):
                out = root / f"{backend}-{seed}"
                wall = run(train_command(backend, out, ns, seed), root / f"train-{backend}-{seed}.log")
                m = json.loads((out / "metrics.json").read_text())
                results["train"].setdefault(backend, []).append(
                    {
                        "seed": seed,
                        "validation_accuracy": m["validation_accuracy"],
                        "validation_f1": m["validation_f1"],
                        "train_reviews_per_second": m["train_reviews_per_second"],
                        "train_seconds": m["train_seconds"],
                        "wall_seconds": round(wall, 1),
                    }
                )
                print(f"trained {backend}, seed {seed}: {results['train'][backend][-1]}", flush=True)
        export = root / "savedmodel"
        torch_folder = root / f"torch-{ns.seeds[0]}"
        export_cmd = [sys.executable, "-m", "bertsent", "export", "--model", str(torch_folder), "--output-dir"]
        run([*export_cmd, str(export), "--format", "tf-savedmodel", "--strings"], root / "export.log")
        parity = json.loads((export / "compression.json").read_text())["parity"]["max_abs_diff"]
        for kind, folder in (("torch", torch_folder), ("savedmodel", export), ("strings", export)):
            r = worker_json([kind, str(folder), *(argv or sys.argv[1:])], root / f"predict-{kind}.log")
            results["predict"][kind] = r | {"reviews_per_second": ns.test / r["seconds"]}
        results["export_parity_max_abs_diff"] = parity

    summary = {}
    for backend, runs in results["train"].items():
        acc = np.array([r["validation_accuracy"] for r in runs])
        speed = np.array([r["train_reviews_per_second"] for r in runs])
        summary[backend] = {"accuracy_mean": acc.mean(), "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else 0.0}
        summary[backend] |= {"per_seed": acc.tolist(), "reviews_per_second": float(np.median(speed))}
    results["summary"] = summary
    t, k = summary["torch"], summary["keras"]
    base = results["predict"]["torch"]
    print()
    print("| Training (1 epoch) | Validation accuracy, mean ± sd | Per seed | Train reviews/s (median) | vs PyTorch |")
    print("|---|---|---|---|---|")
    for name, r in (("PyTorch loop", t), ("Keras `model.fit`", k)):
        ratio = r["reviews_per_second"] / t["reviews_per_second"]
        print(
            f"| {name} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
            f"{', '.join(f'{a:.3f}' for a in r['per_seed'])} | {r['reviews_per_second']:.2f} | {ratio:.2f}x |"
        )
    gap = abs(t["accuracy_mean"] - k["accuracy_mean"]) * 100
    print(f"\nvalidation accuracy gap of the means: {gap:.2f} points over {len(ns.seeds)} seeds (goal: within 1.5)")
    print(f"SavedModel export parity (max |logit diff| vs PyTorch): {parity:.2g}\n")
    print("| Prediction (PyTorch-trained model) | Reviews/s | vs PyTorch fp32 | Accuracy | Labels equal to PyTorch |")
    print("|---|---|---|---|---|")
    for name, key in (
        ("PyTorch fp32 `Predictor`", "torch"),
        ("SavedModel, token-id signature (HF tokenizer outside)", "savedmodel"),
        ("SavedModel, raw-text signature (tokenizer in the graph)", "strings"),
    ):
        r = results["predict"][key]
        same = float(np.mean(np.array(r["predicted"]) == np.array(base["predicted"])))
        print(
            f"| {name} | {r['reviews_per_second']:.1f} | {r['reviews_per_second'] / base['reviews_per_second']:.2f}x "
            f"| {r['accuracy']:.4f} | {same:.2%} |"
        )
    if ns.json:
        Path(ns.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
