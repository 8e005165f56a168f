"""Commands that only read params or the tracking store start without `import torch`
(2.6-3.0 s of a 2-core machine's start-up)."""

from __future__ import annotations

import subprocess
import sys


def test_reading_params_and_listing_stale_runs_import_no_torch():
    probe = ("import sys, mnist_precision.params, mnist_precision.runs; "
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
