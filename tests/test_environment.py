"""What the `environment` stage writes is what PyTorch itself would say, read without importing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mnist_precision.base.environment import cpu_capability, describe, torch_versions

from helpers import REPO_ROOT

TORCH_SAYS = "import json, torch; print(json.dumps(torch.backends.cpu.get_cpu_capability()))"


@pytest.mark.parametrize("chosen", [None, "default", "avx2"])
def test_the_cpu_capability_is_the_one_pytorch_dispatches_to(chosen):
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if chosen:
        env["ATEN_CPU_CAPABILITY"] = chosen
    if chosen == "avx2" and cpu_capability(environ={}) == "DEFAULT":
        pytest.skip("this CPU has no AVX2")
    said = json.loads(
        subprocess.run([sys.executable, "-c", TORCH_SAYS], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert cpu_capability(environ=env) == said


def test_pytorchs_rule_on_flags_it_has_not_seen_here():
    avx512 = {"avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"}
    assert cpu_capability(avx512, environ={}) == "AVX512"
    assert cpu_capability(avx512 - {"avx512dq"}, environ={}) == "AVX2"  # an AVX-512 PyTorch does not use
    assert cpu_capability({"avx2"}, environ={}) == "DEFAULT"  # AVX2 without FMA
    assert cpu_capability(avx512, environ={"ATEN_CPU_CAPABILITY": "default"}) == "DEFAULT"
    assert cpu_capability({"avx2", "fma"}, environ={"ATEN_CPU_CAPABILITY": "nonsense"}) == "AVX2"  # PyTorch ignores it


def test_the_versions_are_the_ones_torch_reports():
    versions = torch_versions()
    assert versions["torch"] == torch.__version__
    assert versions["cuda"] == (torch.version.cuda or "none")
    cudnn = torch.backends.cudnn.version()  # e.g. 92400 for 9.24.0
    if cudnn:
        major, minor, patch = (int(part) for part in versions["cudnn"].split(".")[:3])
        assert major * 10000 + minor * 100 + patch == cudnn


def test_a_cpu_run_is_described_by_its_cpu_and_a_forced_cpu_ignores_any_gpu():
    described = describe("cpu")
    assert described.device == "cpu" and described.cpu and described.cores and described.cores >= 1
    assert described.cpu_capability == cpu_capability()
    assert described.gpu is None and "gpu" not in json.loads(described.to_json())
    if not torch.cuda.is_available():
        assert describe("auto") == described


def test_the_stage_imports_no_torch_and_rewrites_the_file_only_when_it_changed(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__'); "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )

    def run(**env) -> str:
        return subprocess.run(
            [sys.executable, "-c", probe, str(REPO_ROOT / "stages" / "environment.py")],
            cwd=tmp_path,
            env=os.environ | env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    out = run(ATEN_CPU_CAPABILITY="default")
    assert "written to environment.json" in out and out.splitlines()[-1] == "[]"
    written = tmp_path / "environment.json"
    first = written.stat()
    assert "unchanged" in run(ATEN_CPU_CAPABILITY="default")
    assert written.stat().st_mtime_ns == first.st_mtime_ns  # DVC sees the same file
    assert json.loads(written.read_text())["cpu_capability"] == "DEFAULT"
