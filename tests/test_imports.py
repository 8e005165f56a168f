"""Commands that only read params or the tracking store start without `import torch`
(2.6-3.0 s of a 2-core machine's start-up); the train stage's torchrun launcher,
which only waits for its ranks, without `import mlflow`."""

from __future__ import annotations

import subprocess
import sys

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
