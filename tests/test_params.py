"""params.yaml validation: bad values are refused before any work, with the fix named."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from mnist_precision.base.params import ParamsError, load, parse
from mnist_precision.base.precision_table import NAMES

from helpers import REPO_ROOT

DEFAULTS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def with_value(path: str, value):
    tree = copy.deepcopy(DEFAULTS)
    *parents, key = path.split(".")
    node = tree
    for parent in parents:
        node = node[parent]
    node[key] = value
    return tree


def test_project_params_are_valid_and_typed():
    params = load(REPO_ROOT / "params.yaml")
    assert params.precision == "fp32"
    assert params.device == "auto"
    assert params.train.batch_size == 64 and params.train.lr == 0.01 and params.train.hidden == (256,)
    assert params.mlflow_experiment == "mnist-precision"
    flat = params.flat()
    assert flat["precision"] == "fp32" and flat["train.batch_size"] == 64 and flat["train.hidden"] == [256]


@pytest.mark.parametrize("precision", NAMES)
def test_every_precision_is_accepted(precision):
    assert parse(with_value("precision", precision)).precision == precision


@pytest.mark.parametrize(
    "key, value, expected",
    [
        (
            "precision",
            "fp64",
            ["precision", "'fp64'", "fp32, fp16, bf16, fp16-true, bf16-true, fp16-true-sr, bf16-true-sr, tf32, fp8"],
        ),
        ("loss_scale", "static", ["loss_scale", "dynamic (the GradScaler), none (no scaling) or a fixed", "'static'"]),
        ("loss_scale", 0, ["loss_scale", "positive number", "0"]),
        ("loss_scale", True, ["loss_scale", "True"]),
        ("diagnostics.every_steps", -1, ["diagnostics.every_steps", ">= 0", "-1"]),
        ("device", "tpu", ["device", "'tpu'", "auto, cpu, cuda"]),
        ("train.batch_size", 0, ["train.batch_size", ">= 1", "0"]),
        ("train.batch_size", 64.5, ["train.batch_size", "integer", "64.5"]),
        ("train.epochs", -1, ["train.epochs", ">= 1", "-1"]),
        ("train.epochs", True, ["train.epochs", "integer", "True"]),
        ("train.lr", 0, ["train.lr", "positive", "0"]),
        ("train.lr", "fast", ["train.lr", "positive", "'fast'"]),
        ("train.hidden", [], ["train.hidden", "[256]"]),
        ("train.hidden", [256, 0], ["train.hidden[1]", ">= 1"]),
        ("seed", -3, ["seed", ">= 0"]),
        ("train.compile", "yes", ["train.compile", "true or false", "'yes'"]),
        ("mlflow.experiment", "", ["mlflow.experiment", "non-empty"]),
        ("train.processes", 0, ["train.processes", ">= 1 or 'auto'", "0"]),
        ("train.processes", "all", ["train.processes", "'auto'", "'all'"]),
        ("train.grad_comm", "fp8", ["train.grad_comm", "fp32, fp16, bf16", "'fp8'"]),
        ("train.grad_comm", "fp16", ["train.grad_comm must be fp32 or the run's precision (fp32)", "'fp16'"]),
        ("train.max_steps", 0, ["train.max_steps", ">= 1 per epoch, or null for whole epochs", "0"]),
        ("train.max_steps", "few", ["train.max_steps", "null", "'few'"]),
        ("optimizer", "adam", ["optimizer", "sgd, adamw", "'adam'"]),
        ("train.weight_decay", -0.1, ["train.weight_decay", ">= 0", "-0.1"]),
        ("train.betas", [0.9], ["train.betas", "two numbers in [0, 1)", "[0.9]"]),
        ("train.betas", [0.9, 1.0], ["train.betas", "[0.9, 0.999]", "[0.9, 1.0]"]),
        ("train.eps", 0, ["train.eps", "positive", "0"]),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ParamsError) as error:
        parse(with_value(key, value))
    for fragment in expected:
        assert fragment in str(error.value)


def test_unknown_key_suggests_the_nearest_known_key():
    tree = with_value("train.batchsize", 32)
    with pytest.raises(ParamsError, match=r"unknown key 'train.batchsize'.*did you mean 'train.batch_size'"):
        parse(tree)


def test_missing_key_is_named():
    tree = copy.deepcopy(DEFAULTS)
    del tree["train"]["lr"]
    with pytest.raises(ParamsError, match="missing the key 'train.lr'"):
        parse(tree)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("precision: fp32\ntrain:\n  epochs: [1\n  lr: 0.1\n")
    with pytest.raises(ParamsError, match=r"params.yaml:\d+:\d+: YAML syntax error"):
        load(path)


def test_missing_file_says_where_to_run(tmp_path):
    with pytest.raises(ParamsError, match="not found.*run from the project root"):
        load(tmp_path / "params.yaml")


@pytest.mark.parametrize("loss_scale", ["none", 1024, 2.5])
def test_fp16_takes_any_loss_scale(loss_scale):
    tree = with_value("precision", "fp16") | {"loss_scale": loss_scale}
    assert parse(tree).loss_scale == (loss_scale if loss_scale == "none" else float(loss_scale))


@pytest.mark.parametrize(
    "precision, why",
    [
        ("bf16", "bf16's exponent range is fp32's"),
        ("bf16-true", "bf16's exponent range is fp32's"),
        ("fp16-true", "no fp32 master weights"),
        ("fp32", "not half precision"),
        ("fp8", "scales each float8 tensor"),
    ],
)
def test_a_loss_scale_is_refused_where_it_does_not_apply(precision, why):
    with pytest.raises(
        ParamsError, match=f"loss_scale applies to fp16 only, got 'none' with precision {precision}: .*{why}"
    ):
        parse(with_value("precision", precision) | {"loss_scale": "none"})
    assert parse(with_value("precision", precision)).loss_scale == "dynamic"  # the default passes


@pytest.mark.parametrize("precision", ["fp16-true", "bf16-true", "fp8"])
def test_data_parallel_runs_of_unverified_precisions_are_refused(precision):
    tree = with_value("precision", precision)
    tree["train"]["processes"] = 2
    with pytest.raises(ParamsError, match=f"train.processes must be 1 with precision {precision}, got 2"):
        parse(tree)


def test_train_stage_refuses_bad_params_before_any_work(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("precision", "fp64")))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        "train: error: precision must be one of fp32, fp16, bf16, fp16-true, bf16-true, fp16-true-sr, bf16-true-sr, "
        "tf32, fp8; got 'fp64'" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no store, no outputs


@pytest.mark.parametrize(
    "precision, needs", [("tf32", "8.0 or newer (Ampere and later"), ("fp8", "8.9 or newer (Ada Lovelace and Hopper")]
)
def test_gpu_only_precisions_are_refused_on_the_cpu_before_any_work(tmp_path, precision, needs):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_value("precision", precision) | {"device": "cpu"}))
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        f"train: error: precision {precision} runs only on NVIDIA GPUs of compute capability {needs}" in result.stderr
    )
    assert "this run's device is cpu: choose another precision (fp32, fp16, bf16)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_numbers_are_read_as_yaml_1_2_reads_them(tmp_path):
    """`lr: 1e-3` typed by hand is a number, as DVC (YAML 1.2) reads it, not YAML 1.1's string."""
    path = tmp_path / "params.yaml"
    text = (REPO_ROOT / "params.yaml").read_text()
    path.write_text(text.replace("lr: 0.01", "lr: 1e-3"))
    assert load(path).train.lr == 0.001
    path.write_text(text.replace("lr: 0.01", "lr: 2E-2").replace("batch_size: 64", "batch_size: 1e2"))
    with pytest.raises(ParamsError, match=r"train.batch_size must be an integer, got 100.0"):
        load(path)


def test_every_bad_value_is_reported_at_once():
    tree = with_value("precision", "fp64")
    tree["train"] |= {"lr": -1, "epochs": 0, "batchsize": 3, "betas": [0.9, 2], "eps": -1e-8}
    tree["optimizer"] = "lamb"
    del tree["seed"]
    with pytest.raises(ParamsError) as error:
        parse(tree)
    message = str(error.value)
    assert message.startswith("params.yaml has 8 problems:\n")
    for fragment in (
        "precision must be one of",
        "missing the key 'seed'",
        "train.epochs must be an integer >= 1",
        "train.lr must be a positive number, got -1",
        "unknown key 'train.batchsize'",
        "optimizer must be one of sgd, adamw; got 'lamb'",
        "train.betas must be a list of two",
        "train.eps must be a positive number, got -1e-08",
    ):
        assert fragment in message


def test_gradients_travel_in_the_runs_own_precision():
    tree = with_value("precision", "bf16")
    tree["train"] |= {"grad_comm": "bf16", "processes": "auto"}
    params = parse(tree)
    assert (params.train.grad_comm, params.train.processes) == ("bf16", "auto")


def test_values_set_with_dvc_exp_run_s_are_read_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml through DVC's own overrides
    (Hydra's grammar): its numbers, lists and nulls are read as typed values."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO_ROOT / "params.yaml").read_text())
    apply_overrides(
        path,
        [
            "precision=fp16",
            "loss_scale=1024",
            "train.lr=1e-3",
            "train.hidden=[512,512]",
            "train.max_steps=null",
            "train.processes=auto",
            "train.betas=[0.8,0.99]",
        ],
    )
    params = load(path)
    assert (params.precision, params.loss_scale, params.train.lr) == ("fp16", 1024.0, 0.001)
    assert params.train.hidden == (512, 512) and params.train.max_steps is None
    assert (params.train.processes, params.train.betas) == ("auto", (0.8, 0.99))
    apply_overrides(path, ["train.epochs=three", "train.lr=0"])
    with pytest.raises(ParamsError) as error:
        load(path)
    assert "train.epochs must be an integer, got 'three'" in str(error.value)
    assert "train.lr must be a positive number, got 0" in str(error.value)
