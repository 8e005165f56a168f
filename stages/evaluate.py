"""DVC stage `evaluate`: test-set metrics, the confusion matrix, and the fp16-stored copy's accuracy."""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch

from mnist_precision.base import names, paths
from mnist_precision.base.atomic import atomic_write_json
from mnist_precision.base.entry import run_stage
from mnist_precision.base.figures import new_figure, save_png
from mnist_precision.base.params import load
from mnist_precision.base.precision_table import BASELINE
from mnist_precision.core.checkpoint import atomic_torch_save
from mnist_precision.core.data import load_split
from mnist_precision.core.device import resolve_device
from mnist_precision.core.evaluation import evaluate, fp16_stored_copy, stored_bytes
from mnist_precision.core.model import CLASSES, build_mlp
from mnist_precision.core.precision import PrecisionPolicy
from mnist_precision.core.threads import budget
from mnist_precision.tracking.lifecycle import run_scope
from mnist_precision.tracking.lineage import log_split
from mnist_precision.tracking.registry import tag_version
from mnist_precision.tracking.store import configure
from mnist_precision.tracking.training_run import RunFile


def save_confusion_png(matrix: torch.Tensor, accuracy: float, precision: str, path: Path) -> None:
    figure, axes = new_figure(size=(6, 5))
    image = axes.imshow(matrix.numpy(), cmap="Blues")
    for actual in range(CLASSES):
        for predicted in range(CLASSES):
            count = int(matrix[actual, predicted])
            axes.text(
                predicted,
                actual,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if count > matrix.max() / 2 else "black",
            )
    axes.set(
        xticks=range(CLASSES),
        yticks=range(CLASSES),
        xlabel="predicted",
        ylabel="actual",
        title=f"MNIST test set, {precision}: accuracy {accuracy:.4f}",
    )
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    save_png(figure, path)


def write_fp16_copy(half: dict[str, torch.Tensor]) -> int:
    """The weights stored in fp16, a file of their own; returns its bytes."""
    atomic_torch_save(paths.MODEL_FP16, half)
    return paths.MODEL_FP16.stat().st_size


def main() -> None:
    params = load(paths.PARAMS)
    torch.set_num_threads(budget(params.train.threads).threads)
    device = resolve_device(params.device, params.precision)
    policy = PrecisionPolicy(params.precision, device.type)
    trained_run = RunFile.read()
    configure()

    trained = torch.load(paths.require(paths.MODEL, "train"), map_location="cpu", weights_only=True)
    state = {name: tensor.float() for name, tensor in trained.items()}  # weights trained in half widen exactly
    model = build_mlp(params.train.hidden)
    model.load_state_dict(state)
    policy.convert_module(model.to(device))  # evaluated in the precision it was trained in
    test = load_split(paths.require(paths.DATA_DIR, "download"), "test", device)

    with run_scope(run_id=trained_run.run_id):
        log_split(paths.DATA_DIR, "test", len(test), context="evaluation")
        with policy.numerics():
            result = evaluate(model, test, policy, params.evaluate.batch_size)
        half, widened = fp16_stored_copy(state)
        model = build_mlp(params.train.hidden)
        model.load_state_dict(widened)
        fp32 = PrecisionPolicy(BASELINE, device.type)
        with fp32.numerics():
            fp16_stored = evaluate(model.to(device), test, fp32, params.evaluate.batch_size)

        metrics = {
            names.TEST_ACCURACY: result.accuracy,
            names.TEST_LOSS: result.loss,
            names.MODEL_BYTES_FP32: stored_bytes(state),
            names.MODEL_BYTES_FP16: write_fp16_copy(half),
            names.FP16_STORED_TEST_ACCURACY: fp16_stored.accuracy,
        }
        per_class = result.per_class_accuracy(test.labels)
        mlflow.log_metrics(metrics | {names.test_accuracy_of_class(c): a for c, a in per_class.items()})

        labels = test.labels.cpu()
        atomic_write_json(paths.EVAL_METRICS, metrics | {"per_class_accuracy": per_class})
        atomic_write_json(
            paths.CONFUSION_PLOT,
            [
                {names.PLOT_ACTUAL: int(a), names.PLOT_PREDICTED: int(p)}
                for a, p in zip(labels.tolist(), result.predictions.tolist(), strict=True)
            ],
            indent=None,
        )
        save_confusion_png(result.confusion(labels), result.accuracy, params.precision, paths.CONFUSION_PNG)
        mlflow.log_artifact(str(paths.EVAL_METRICS), artifact_path="metrics")
        mlflow.log_artifact(str(paths.CONFUSION_PNG), artifact_path="plots")
        mlflow.log_artifact(str(paths.MODEL_FP16), artifact_path="model_fp16")
        if trained_run.model_version:
            accuracy = {names.TEST_ACCURACY: str(result.accuracy)}
            tag_version(str(trained_run.registered_model), trained_run.model_version, accuracy)


if __name__ == "__main__":
    run_stage("evaluate", main)
