"""Read and validate params.yaml before any work is done.

Every key is checked for type, range and allowed values; an unknown key is an
error that suggests the nearest known one. Errors name the key, the bad value
and what is allowed, so the user can fix params.yaml (or the `-S` override)
without reading code, and every bad value is reported at once.

The file is read as YAML 1.2 reads numbers, as DVC (which writes params.yaml
on `-S`) does: `lr: 1e-3` is a number, not the string that YAML 1.1 makes it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnist_precision.base.errors import UserError
from mnist_precision.base.paths import PARAMS as PARAMS_FILE
from mnist_precision.base.precision_table import NAMES as PRECISIONS
from mnist_precision.base.precision_table import PRECISIONS as TABLE
from mnist_precision.base.precision_table import parse_loss_scale

DEVICES = ("auto", "cpu", "cuda")
GRAD_COMM = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("sgd", "adamw")  # torch.optim.SGD (the tutorial's) or torch.optim.AdamW


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or holds a value we refuse."""


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int  # the global batch, whatever the number of processes
    lr: float
    hidden: tuple[int, ...]
    compile: bool
    processes: int | str = 1  # a count, or "auto": one per visible GPU
    grad_comm: str = "fp32"  # the precision gradients travel in between processes
    checkpoint_every: int = 1  # write a checkpoint every this many epochs; 0: only when stopped
    threads: int | str = "auto"  # intra-op threads: a count, or auto (this process's share of the cores)
    max_steps: int | None = None  # at most this many steps in each epoch; None: whole epochs
    # AdamW's own (PyTorch's defaults); plain SGD takes none of them.
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int


@dataclass(frozen=True)
class Params:
    precision: str
    loss_scale: str | float  # dynamic, none or a fixed number (fp16 only)
    optimizer: str  # sgd or adamw
    seed: int
    device: str
    train: TrainParams
    evaluate: EvaluateParams
    diagnostics_every: int  # measure the numerics every this many steps; 0: never
    mlflow_experiment: str
    raw: dict[str, Any]

    def flat(self) -> dict[str, Any]:
        """The params as MLflow logs them: nested keys joined with dots."""
        return flatten(self.raw)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


# The checkers: each returns the cleaned value or raises.
def _int(minimum: int):
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key} must be an integer, got {value!r}")
        if value < minimum:
            raise ParamsError(f"{key} must be an integer >= {minimum}, got {value!r}")
        return value

    return check


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ParamsError(f"{key} must be a positive number, got {value!r}")
    if value != value or value == float("inf"):
        raise ParamsError(f"{key} must be a finite positive number, got {value!r}")
    return float(value)


def _non_negative_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ParamsError(f"{key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _betas(key: str, value: Any) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    ):
        raise ParamsError(f"{key} must be a list of two numbers in [0, 1) such as [0.9, 0.999], got {value!r}")
    return float(value[0]), float(value[1])


def _choice(allowed: tuple[str, ...]):
    def check(key: str, value: Any) -> str:
        if value not in allowed:
            raise ParamsError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return check


def _hidden(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise ParamsError(f"{key} must be a non-empty list of layer widths such as [256], got {value!r}")
    return tuple(_int(1)(f"{key}[{i}]", width) for i, width in enumerate(value))


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamsError(f"{key} must be true or false, got {value!r}")
    return value


def _processes(key: str, value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(f"{key} must be a number of processes >= 1 or 'auto' (one per visible GPU), got {value!r}")
    return value


def _loss_scale(key: str, value: Any) -> str | float:
    try:
        return parse_loss_scale(value)
    except ValueError:
        raise ParamsError(
            f"{key} must be dynamic (the GradScaler), none (no scaling) or a fixed positive "
            f"number such as 1024, got {value!r}"
        ) from None


def _threads(key: str, value: Any) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(
            f"{key} must be a number of threads >= 1 or 'auto' (this experiment's share of the cores), got {value!r}"
        )
    return value


def _max_steps(key: str, value: Any) -> int | None:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParamsError(f"{key} must be a number of steps >= 1 per epoch, or null for whole epochs, got {value!r}")
    return value


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"{key} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Key:
    """One key of params.yaml: its checker, and what docs/parameters.md says of it."""

    check: Callable[[str, Any], Any]
    accepts: str
    meaning: str


SCHEMA: dict[str, Any] = {
    "precision": Key(
        _choice(PRECISIONS), ", ".join(PRECISIONS), "what the run computes in ([precisions](precisions.md))"
    ),
    "loss_scale": Key(
        _loss_scale,
        "dynamic, none or a positive number",
        "fp16 only: the GradScaler, no scaling (the ablation), or a fixed scale",
    ),
    "optimizer": Key(
        _choice(OPTIMIZERS),
        ", ".join(OPTIMIZERS),
        "torch.optim.SGD (the tutorial's) or torch.optim.AdamW (train.weight_decay, betas, eps)",
    ),
    "seed": Key(
        _int(0), "an integer >= 0", "the weights' initialisation, the shuffling and stochastic rounding's random stream"
    ),
    "device": Key(_choice(DEVICES), ", ".join(DEVICES), "auto: CUDA where a GPU is visible, else the CPU"),
    "train": {
        "epochs": Key(_int(1), "an integer >= 1", "passes over the 60,000 training images"),
        "batch_size": Key(_int(1), "an integer >= 1", "the global batch, whatever the number of processes"),
        "lr": Key(_positive_float, "a finite positive number", "the optimizer's learning rate"),
        "hidden": Key(
            _hidden,
            "a non-empty list of integers >= 1",
            "the hidden layers' widths: [256] is Linear(784, 256), ReLU, Linear(256, 10)",
        ),
        "compile": Key(_bool, "true or false", "torch.compile the model (on a GPU with CUDA graphs)"),
        "processes": Key(
            _processes,
            "an integer >= 1, or auto",
            "data-parallel processes through torchrun and DDP; auto: one per visible GPU",
        ),
        "grad_comm": Key(
            _choice(GRAD_COMM),
            ", ".join(GRAD_COMM),
            "the precision gradients travel in between processes: fp32, or the run's own",
        ),
        "checkpoint_every": Key(
            _int(0), "an integer >= 0", "write a checkpoint every this many epochs; 0: only when stopped"
        ),
        "threads": Key(
            _threads,
            "an integer >= 1, or auto",
            "intra-op threads; auto: the cores shared among this repository's running experiments",
        ),
        "max_steps": Key(
            _max_steps,
            "an integer >= 1, or null",
            "at most this many steps in each epoch, for smoke runs; null: whole epochs",
        ),
        "weight_decay": Key(_non_negative_float, "a finite number >= 0", "AdamW's decoupled weight decay"),
        "betas": Key(_betas, "two numbers in [0, 1)", "AdamW's moment decay rates"),
        "eps": Key(
            _positive_float,
            "a finite positive number",
            "AdamW's term added to the root of the second moment (0 in float16 below 2^-25)",
        ),
    },
    "evaluate": {
        "batch_size": Key(_int(1), "an integer >= 1", "the test set's batch (no effect on the result)"),
    },
    "diagnostics": {
        "every_steps": Key(
            _int(0), "an integer >= 0", "measure the numerics every this many steps, on rank 0; 0: never"
        ),
    },
    "mlflow": {
        "experiment": Key(_name, "a non-empty string", "the MLflow experiment the runs go to"),
    },
}


def reference(defaults: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, accepted values, the value in `defaults`, meaning) for every key of
    the schema: the rows of docs/parameters.md."""
    flat = flatten(defaults)
    rows = []

    def walk(schema: dict[str, Any], prefix: str) -> None:
        for name, entry in schema.items():
            if isinstance(entry, dict):
                walk(entry, f"{prefix}{name}.")
            else:
                key = f"{prefix}{name}"
                rows.append(
                    (
                        key,
                        entry.accepts,
                        yaml.safe_dump(flat.get(key), default_flow_style=True).removesuffix("\n...\n").strip(),
                        entry.meaning,
                    )
                )

    walk(SCHEMA, "")
    return rows


def _validate(tree: Any, schema: dict[str, Any], errors: list[str], prefix: str = "") -> dict[str, Any]:
    """The cleaned values of `tree`; each bad one adds its message to `errors`."""
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(tree, dict):
        errors.append(f"{where} must be a mapping of keys to values, got {tree!r}")
        return {}
    for key in tree:
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
            known = ", ".join(f"{prefix}{k}" for k in schema)
            errors.append(f"unknown key '{prefix}{key}' in params.yaml{hint} (known keys: {known})")
    clean: dict[str, Any] = {}
    for key, entry in schema.items():
        name = f"{prefix}{key}"
        if key not in tree:
            errors.append(f"params.yaml is missing the key '{name}'")
        elif isinstance(entry, dict):
            clean[key] = _validate(tree[key], entry, errors, prefix=f"{name}.")
        else:
            try:
                clean[key] = entry.check(name, tree[key])
            except ParamsError as error:
                errors.append(str(error))
    return clean


def parse(tree: Any) -> Params:
    """Validate a params mapping (as read from YAML) and return typed params."""
    errors: list[str] = []
    clean = _validate(tree, SCHEMA, errors)
    grad_comm, precision = clean.get("train", {}).get("grad_comm"), clean.get("precision")
    if grad_comm not in (None, "fp32", precision) and precision is not None:
        errors.append(
            f"train.grad_comm must be fp32 or the run's precision ({precision}), got {grad_comm!r}: "
            "gradients are sent in fp16 or bf16 only by runs that compute in it"
        )
    processes = clean.get("train", {}).get("processes")
    if processes not in (None, 1) and precision in TABLE and not TABLE[precision].data_parallel_verified:
        errors.append(
            f"train.processes must be 1 with precision {precision}, got {processes!r}: data-parallel "
            f"training is verified for fp32, fp16 and bf16 only"
        )
    loss_scale = clean.get("loss_scale")
    if loss_scale not in (None, "dynamic") and precision in TABLE and not TABLE[precision].loss_scaling:
        errors.append(
            f"loss_scale applies to fp16 only, got {loss_scale!r} with precision {precision}: "
            f"{TABLE[precision].no_loss_scale_because}; leave it at dynamic"
        )
    if len(errors) == 1:
        raise ParamsError(errors[0])
    if errors:
        raise ParamsError(f"params.yaml has {len(errors)} problems:\n" + "\n".join(f"  - {e}" for e in errors))
    return Params(
        precision=clean["precision"],
        loss_scale=clean["loss_scale"],
        optimizer=clean["optimizer"],
        seed=clean["seed"],
        device=clean["device"],
        train=TrainParams(**clean["train"]),
        evaluate=EvaluateParams(**clean["evaluate"]),
        diagnostics_every=clean["diagnostics"]["every_steps"],
        mlflow_experiment=clean["mlflow"]["experiment"],
        raw=tree,
    )


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats: `1e-3` and `2E5` are numbers."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def load(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml; syntax errors are reported with the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(
            f"{path} not found in {Path.cwd()}: run from the project root, where params.yaml lives"
        ) from None
    try:
        tree = yaml.load(text, Loader=Yaml12Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise ParamsError(f"{where}: YAML syntax error: {problem}") from None
    return parse(tree)


def experiment_name(given: str | None) -> str:
    """The MLflow experiment a command reads: the one given (--experiment), else params.yaml's."""
    return given or load(PARAMS_FILE).mlflow_experiment
