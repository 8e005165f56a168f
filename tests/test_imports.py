"""What a process of the project pays to start and to end. Commands that only
read params or the tracking store, the package and `--help` start without
`import torch` (seconds of a 2-core machine's start-up); the train stage's
torchrun launcher, which only waits for its ranks, without `import mlflow`.
A stage or command exits without collecting its whole heap."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO_ROOT


def test_reading_params_and_listing_stale_runs_import_no_torch():
    probe = (
        "import sys, mnist_precision.base.params, mnist_precision.operations.runs; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"


def test_the_train_stages_entry_imports_no_mlflow_before_it_trains():
    probe = (
        f"import runpy, sys; runpy.run_path({str(REPO_ROOT / 'stages' / 'train.py')!r}, run_name='probe'); "
        "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))"
    )
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"


def top_level_imports(*args: str) -> set[str]:
    """The modules `python -X importtime *args` imports at the top level of an import."""
    run = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, check=True)
    lines = [line.split("|") for line in run.stderr.splitlines() if line.startswith("import time:")]
    return {fields[2].strip() for fields in lines if len(fields) == 3}


def test_the_package_and_the_commands_help_import_no_torch():
    help_ = "import sys; sys.argv = ['mnist-precision', '--help']; from mnist_precision.cli import main; main()"
    for args in (("-c", "import mnist_precision"), ("-c", help_)):
        imported = top_level_imports(*args)
        assert "mnist_precision" in imported, args
        assert "torch" not in imported and "mlflow" not in imported, args


@pytest.mark.parametrize(("main", "code"), [("lambda: None", 0), ("raise_(UserError('bad input'))", 2)])
def test_a_stage_process_ends_with_its_heap_left_to_the_os(main, code):
    """`run_stage` freezes the collector, so the interpreter's last sweep of
    every object (a second with torch and MLflow loaded) is skipped, on every exit."""
    probe = (
        "import atexit, gc; from mnist_precision.base.entry import run_stage; "
        "from mnist_precision.base.errors import UserError\n"
        "def raise_(error):\n    raise error\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        f"run_stage('probe', lambda: {main})"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (run.returncode, run.stdout.strip()) == (code, "frozen True"), run.stderr
