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
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, PrivateAttr, ValidationError, model_validator

from mnist_precision.base import precision_table
from mnist_precision.base.errors import UserError
from mnist_precision.base.paths import PARAMS as PARAMS_FILE

DEVICES = ("auto", "cpu", "cuda")
GRAD_COMM = ("fp32", "fp16", "bf16")
OPTIMIZERS = ("sgd", "adamw")  # torch.optim.SGD (the tutorial's) or torch.optim.AdamW


class ParamsError(UserError, ValueError):
    """params.yaml is missing, unreadable or holds a value we refuse."""


@dataclass(frozen=True)
class Doc:
    """What docs/parameters.md says of a key: the values it accepts and what it does."""

    accepts: str
    meaning: str


# The checks: each returns the value, cleaned, or raises a ValueError whose text
# follows the key's name ("train.lr must be ..."). YAML's values are taken as
# they are: no string becomes a number, no bool an integer.
def integer(minimum: int, kind: str = "an integer") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be {kind}, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be {kind} >= {minimum}, got {value!r}")
        return value

    return check


def positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite positive number, got {value!r}")
    return float(value)


def non_negative(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"must be a finite number >= 0, got {value!r}")
    return float(value)


def decay_rates(value: Any) -> tuple[float, float]:
    numbers = isinstance(value, (list, tuple)) and len(value) == 2
    if not numbers or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value):
        raise ValueError(f"must be a list of two numbers in [0, 1) such as [0.9, 0.999], got {value!r}")
    return float(value[0]), float(value[1])


def one_of(allowed: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return check


def widths(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a non-empty list of layer widths such as [256], got {value!r}")
    for index, width in enumerate(value):
        try:
            integer(1)(width)
        except ValueError as error:
            raise ValueError(f"[{index}] {error}") from None
    return tuple(value)


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def count_or_auto(what: str, auto: str) -> Callable[[Any], int | str]:
    def check(value: Any) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"must be a number of {what} >= 1 or 'auto' ({auto}), got {value!r}")
        return value

    return check


def scale_choice(value: Any) -> str | float:
    try:
        return precision_table.parse_loss_scale(value)
    except ValueError:
        raise ValueError(
            f"must be dynamic (the GradScaler), none (no scaling) or a fixed positive number such as 1024, "
            f"got {value!r}"
        ) from None


def steps_or_null(value: Any) -> int | None:
    if value is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a number of steps >= 1 per epoch, or null for whole epochs, got {value!r}")
    return value


def non_empty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


class Section(BaseModel):
    """A mapping of params.yaml: its keys, each checked; no other key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainParams(Section):
    epochs: Annotated[
        int, BeforeValidator(integer(1)), Doc("an integer >= 1", "passes over the 60,000 training images")
    ]
    batch_size: Annotated[
        int, BeforeValidator(integer(1)), Doc("an integer >= 1", "the global batch, whatever the number of processes")
    ]
    lr: Annotated[float, BeforeValidator(positive), Doc("a finite positive number", "the optimizer's learning rate")]
    hidden: Annotated[
        tuple[int, ...],
        BeforeValidator(widths),
        Doc(
            "a non-empty list of integers >= 1",
            "the hidden layers' widths: [256] is Linear(784, 256), ReLU, Linear(256, 10)",
        ),
    ]
    compile: Annotated[
        bool, BeforeValidator(boolean), Doc("true or false", "torch.compile the model (on a GPU with CUDA graphs)")
    ]
    processes: Annotated[
        int | str,
        BeforeValidator(count_or_auto("processes", "one per visible GPU")),
        Doc("an integer >= 1, or auto", "data-parallel processes through torchrun and DDP; auto: one per visible GPU"),
    ] = 1
    grad_comm: Annotated[
        str,
        BeforeValidator(one_of(GRAD_COMM)),
        Doc(", ".join(GRAD_COMM), "the precision gradients travel in between processes: fp32, or the run's own"),
    ] = "fp32"
    checkpoint_every: Annotated[
        int,
        BeforeValidator(integer(0)),
        Doc("an integer >= 0", "write a checkpoint every this many epochs; 0: only when stopped"),
    ] = 1
    threads: Annotated[
        int | str,
        BeforeValidator(count_or_auto("threads", "this experiment's share of the cores")),
        Doc(
            "an integer >= 1, or auto",
            "intra-op threads; auto: the cores shared among this repository's running experiments",
        ),
    ] = "auto"
    max_steps: Annotated[
        int | None,
        BeforeValidator(steps_or_null),
        Doc("an integer >= 1, or null", "at most this many steps in each epoch, for smoke runs; null: whole epochs"),
    ] = None
    # AdamW's own (PyTorch's defaults); plain SGD takes none of them.
    weight_decay: Annotated[
        float, BeforeValidator(non_negative), Doc("a finite number >= 0", "AdamW's decoupled weight decay")
    ] = 1e-2
    betas: Annotated[
        tuple[float, float], BeforeValidator(decay_rates), Doc("two numbers in [0, 1)", "AdamW's moment decay rates")
    ] = (0.9, 0.999)
    eps: Annotated[
        float,
        BeforeValidator(positive),
        Doc(
            "a finite positive number", "AdamW's term added to the root of the second moment (0 in float16 below 2^-25)"
        ),
    ] = 1e-8


class EvaluateParams(Section):
    batch_size: Annotated[
        int, BeforeValidator(integer(1)), Doc("an integer >= 1", "the test set's batch (no effect on the result)")
    ]


class DiagnosticsParams(Section):
    every_steps: Annotated[
        int,
        BeforeValidator(integer(0)),
        Doc("an integer >= 0", "measure the numerics every this many steps, on rank 0; 0: never"),
    ]


class MlflowParams(Section):
    experiment: Annotated[
        str, BeforeValidator(non_empty), Doc("a non-empty string", "the MLflow experiment the runs go to")
    ]


class Params(Section):
    """params.yaml, checked: every key typed, every value in its range."""

    precision: Annotated[
        str,
        BeforeValidator(one_of(precision_table.NAMES)),
        Doc(", ".join(precision_table.NAMES), "what the run computes in ([precisions](precisions.md))"),
    ]
    loss_scale: Annotated[
        str | float,
        BeforeValidator(scale_choice),
        Doc(
            "dynamic, none or a positive number",
            "fp16 only: the GradScaler, no scaling (the ablation), or a fixed scale",
        ),
    ]
    optimizer: Annotated[
        str,
        BeforeValidator(one_of(OPTIMIZERS)),
        Doc(
            ", ".join(OPTIMIZERS),
            "torch.optim.SGD (the tutorial's) or torch.optim.AdamW (train.weight_decay, betas, eps)",
        ),
    ]
    seed: Annotated[
        int,
        BeforeValidator(integer(0)),
        Doc("an integer >= 0", "the weights' initialisation, the shuffling and stochastic rounding's random stream"),
    ]
    device: Annotated[
        str,
        BeforeValidator(one_of(DEVICES)),
        Doc(", ".join(DEVICES), "auto: CUDA where a GPU is visible, else the CPU"),
    ]
    train: TrainParams
    evaluate: EvaluateParams
    diagnostics: DiagnosticsParams
    mlflow: MlflowParams
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)  # as read, for MLflow's params

    @property
    def diagnostics_every(self) -> int:
        return self.diagnostics.every_steps

    @property
    def mlflow_experiment(self) -> str:
        return self.mlflow.experiment

    def flat(self) -> dict[str, Any]:
        """The params as MLflow logs them: the values as written, nested keys joined with dots."""
        return flatten(self._raw)

    @model_validator(mode="after")
    def combinations(self) -> Params:
        """The keys that hold only together; each problem on a line of its own."""
        precision = precision_table.PRECISIONS[self.precision]
        problems = []
        if self.train.grad_comm not in ("fp32", self.precision):
            problems.append(
                f"train.grad_comm must be fp32 or the run's precision ({self.precision}), got "
                f"{self.train.grad_comm!r}: gradients are sent in fp16 or bf16 only by runs that compute in it"
            )
        if self.train.processes != 1 and not precision.data_parallel_verified:
            problems.append(
                f"train.processes must be 1 with precision {self.precision}, got {self.train.processes!r}: "
                "data-parallel training is verified for fp32, fp16 and bf16 only"
            )
        if self.loss_scale != "dynamic" and not precision.loss_scaling:
            problems.append(
                f"loss_scale applies to fp16 only, got {self.loss_scale!r} with precision {self.precision}: "
                f"{precision.no_loss_scale_because}; leave it at dynamic"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        label = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{label}."))
        else:
            flat[label] = value
    return flat


def reference(defaults: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, accepted values, the value in `defaults`, meaning) for every key of
    the model: the rows of docs/parameters.md."""
    flat = flatten(defaults)
    rows = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for key, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
                walk(field.annotation, f"{prefix}{key}.")
                continue
            doc = next(entry for entry in field.metadata if isinstance(entry, Doc))
            value = yaml.safe_dump(flat.get(f"{prefix}{key}"), default_flow_style=True).removesuffix("\n...\n")
            rows.append((f"{prefix}{key}", doc.accepts, value.strip(), doc.meaning))

    walk(Params, "")
    return rows


def problem(error: dict[str, Any]) -> list[str]:
    """The lines a pydantic error gives, each naming the key and the fix."""
    key = ".".join(str(part) for part in error["loc"])
    where = error["loc"][:-1]
    if error["type"] == "missing":
        return [f"params.yaml is missing the key '{key}'"]
    if error["type"] == "extra_forbidden":
        known = list(section_at(where).model_fields)
        prefix = "".join(f"{part}." for part in where)
        near = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"; did you mean '{prefix}{near[0]}'?" if near else ""
        return [f"unknown key '{key}' in params.yaml{hint} (known keys: {', '.join(prefix + k for k in known)})"]
    if error["type"] == "model_type":
        return [f"{key or 'params.yaml'} must be a mapping of keys to values, got {error['input']!r}"]
    text = str(error["ctx"]["error"]) if "error" in error.get("ctx", {}) else error["msg"]
    if not key:  # the combinations: already whole sentences
        return text.splitlines()
    return [f"{key}{text}" if text.startswith("[") else f"{key} {text}"]


def section_at(where: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Params
    for part in where:
        annotation = model.model_fields[str(part)].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model


def parse(tree: Any) -> Params:
    """Validate a params mapping (as read from YAML) and return typed params; every problem at once."""
    try:
        params = Params.model_validate(tree)
    except ValidationError as error:
        problems = [line for found in error.errors() for line in problem(dict(found))]
        if len(problems) == 1:
            raise ParamsError(problems[0]) from None
        raise ParamsError(
            f"params.yaml has {len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)
        ) from None
    params._raw = tree
    return params


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
