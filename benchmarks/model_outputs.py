"""What users take away, measured: the served model's accuracy, the bytes of
each stored model file, and what registering the model and logging the
datasets add to a training run's wall time.

    python benchmarks/model_outputs.py [--data data/mnist] [--out benchmarks/results/model_outputs.md]

Trains params.yaml's recipe (fp32, SGD) for one epoch, then, in a fresh
SQLite store in a temporary folder, times three ways to end a run, alternated
`--repeats` times after one warm-up of each: the model logged as the train
stage logs it; the same and registered in the Model Registry; the same and
both splits logged as the run's datasets. It serves the logged model with
`mlflow models serve --env-manager local` and sends it the 10,000 test images
as raw pixels over HTTP, and scores the trained network on the normalized
test split, as the evaluate stage does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import torch

from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.environment import cpu_name
from mnist_precision.base.params import load
from mnist_precision.core.checkpoint import atomic_torch_save
from mnist_precision.core.data import load_split, read_pixels, split_files
from mnist_precision.core.download import download_mnist
from mnist_precision.core.evaluation import evaluate, fp16_stored_copy
from mnist_precision.core.idx import read_idx
from mnist_precision.core.model import build_mlp
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.training import train
from mnist_precision.tracking.lineage import log_split
from mnist_precision.tracking.registry import register
from mnist_precision.tracking.training_run import log_model

REPO_ROOT = Path(__file__).resolve().parents[1]
ARMS = ("log the model", "log and register the model", "log the model and both datasets")


def end_of_run(arm: str, weights: dict, hidden, example: torch.Tensor, data: Path) -> float:
    """Seconds of one run's ending, the way `arm` ends it."""
    with mlflow.start_run():
        started = time.perf_counter()
        model = log_model(weights, hidden, example)
        if arm == ARMS[1]:
            register(model.model_uri, "benchmark", {"precision": "fp32"})
        elif arm == ARMS[2]:
            log_split(data, "train", 60_000, context="training")
            log_split(data, "test", 10_000, context="evaluation")
        return time.perf_counter() - started


def served_accuracy(model_uri: str, store: str, pixels: torch.Tensor, labels: torch.Tensor, work: Path) -> float:
    port = 5317
    log = open(work / "serve.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        # The venv's bin first: MLflow starts its own uvicorn.
        env=os.environ | {"MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"mlflow models serve exited: {(work / 'serve.log').read_text()}") from None
                time.sleep(0.5)
        body = json.dumps({"inputs": pixels.tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as answer:
            logits = torch.tensor(json.loads(answer.read())["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    return (logits.argmax(dim=1) == labels).float().mean().item()


def torchvision_import_seconds(repeats: int = 5) -> float:
    """Median seconds of importing torchvision's transforms in a fresh process that has imported torch."""
    probe = (
        "import time, torch; started = time.perf_counter(); from torchvision.transforms import v2; "
        "print(time.perf_counter() - started)"
    )
    runs = [
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        for _ in range(repeats)
    ]
    return statistics.median(float(run.stdout) for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "data" / "mnist")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "model_outputs.md")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    download_mnist(args.data)
    params = load(REPO_ROOT / "params.yaml")
    torch.manual_seed(params.seed)
    network = build_mlp(params.train.hidden)
    policy = PrecisionPolicy("fp32", "cpu")
    train(network, load_split(args.data, "train"), policy, params.train.model_copy(update={"epochs": 1}), params.seed)
    weights = network.state_dict()
    test = load_split(args.data, "test")
    evaluated = evaluate(network, test, policy, params.evaluate.batch_size).accuracy
    example = read_pixels(args.data, "train")[:2]

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        store = f"sqlite:///{work / 'mlflow.db'}"
        mlflow.set_tracking_uri(store)
        mlflow.set_experiment("benchmark")
        seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats + 1):
            for arm in ARMS:
                took = end_of_run(arm, weights, params.train.hidden, example, args.data)
                if repeat:  # the first of each pays the process's one-time costs
                    seconds[arm].append(took)
        model = log_model_once(weights, params.train.hidden, example)
        atomic_torch_save(work / "model.pt", weights)
        atomic_torch_save(work / "model_fp16.pt", fp16_stored_copy(weights)[0])
        logged = Path(mlflow.artifacts.download_artifacts(model.model_uri, dst_path=str(work / "logged")))
        sizes = {
            "models/model.pt (fp32 state_dict)": (work / "model.pt").stat().st_size,
            "models/model_fp16.pt (fp16 state_dict)": (work / "model_fp16.pt").stat().st_size,
            "the logged MLflow model (its folder)": sum(p.stat().st_size for p in logged.rglob("*") if p.is_file()),
        }
        pixels = read_pixels(args.data, "test")
        labels = read_idx(split_files(args.data, "test")[1]).long()
        served = served_accuracy(model.model_uri, store, pixels, labels, work)

    base = statistics.median(seconds[ARMS[0]])
    lines = [
        "# What users take away, measured",
        "",
        f"`python benchmarks/model_outputs.py`, {time.strftime('%Y-%m-%d')}, {cpu_name()}: "
        f"params.yaml's recipe, fp32, one epoch; a run's ending timed {args.repeats} times per way, "
        "alternated, after one warm-up of each (medians).",
        "",
        "| how a run ends | median s | over logging the model alone |",
        "| --- | ---: | ---: |",
        *(
            f"| {arm} | {statistics.median(seconds[arm]):.2f} | {statistics.median(seconds[arm]) - base:+.2f} s |"
            for arm in ARMS
        ),
        "",
        "| stored file | bytes |",
        "| --- | ---: |",
        *(f"| {name} | {size:,} |" for name, size in sizes.items()),
        "",
        f"Test accuracy, 10,000 images: the evaluate stage's way (normalized tensors) {evaluated:.4f}; "
        f"`mlflow models serve` on raw pixels over HTTP {served:.4f}.",
        "",
        f"Importing torchvision's transforms (`from torchvision.transforms import v2`) in a process that has "
        f"imported torch: {torchvision_import_seconds():.2f} s (median of 5 processes). The logged model's "
        "transform (`model.PixelsIn`) is written with torchvision's arithmetic instead of imported from it, "
        "so no training run pays that.",
        "",
    ]
    atomic_write_bytes(args.out, "\n".join(lines).encode())
    print("\n".join(lines))


def log_model_once(weights: dict, hidden, example: torch.Tensor):
    with mlflow.start_run():
        return log_model(weights, hidden, example)


if __name__ == "__main__":
    main()
