"""What the repository itself promises: safe loading, loopback servers, no credentials."""

from __future__ import annotations

import re
import subprocess

import pytest
import torch

from mnist_precision.core.device import DeviceError, resolve_device

from helpers import REPO_ROOT

TRACKED = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
TEXT = {
    name: (REPO_ROOT / name).read_text(errors="replace")
    for name in TRACKED
    if (REPO_ROOT / name).is_file() and name.endswith((".py", ".md", ".sh", ".yaml", ".toml", "run"))
}


def test_models_are_loaded_with_weights_only():
    calls = [
        (name, line)
        for name, text in TEXT.items()
        if name.endswith(".py")
        for line in text.splitlines()
        if re.search(r"torch\.load\(", line)
    ]
    assert calls, "expected the stages to load weights"
    assert all("weights_only=True" in line for _, line in calls), calls


def test_every_mlflow_server_command_binds_to_loopback():
    shell = [
        (name, command)
        for name, text in TEXT.items()
        for command in re.findall(r"mlflow (?:server|ui)\b[^\n`]*", text.replace("\\\n", " "))
        if "--backend-store-uri" in command
    ]
    # The Python that starts one, its arguments on one line or spread over several.
    flat = {name: re.sub(r"\s+", " ", text) for name, text in TEXT.items()}
    python = [
        name
        for name, text in flat.items()
        if '"server", "--backend-store-uri"' in text or ("mlflow_server_command(" in text and name.startswith("src/"))
    ]
    assert {"src/mnist_precision/operations/server.py", "src/mnist_precision/operations/ui.py"} <= set(python)
    assert all("--host 127.0.0.1" in command for _, command in shell), shell  # any a page spells out
    # A command may take the address from its caller only where 127.0.0.1 is the default.
    loopback = ('"--host", "127.0.0.1"', 'add_argument("--host", default="127.0.0.1"', 'Network("127.0.0.1"')
    assert all(any(way in flat[name] for way in loopback) for name in python), python


def test_no_credentials_in_the_repository():
    pattern = re.compile(r"(?i)(aws_secret|secret_key|api_key|password|token)\s*[:=]\s*['\"][^'\"]{8,}")
    assert [name for name, text in TEXT.items() if pattern.search(text)] == []


def test_cuda_without_a_gpu_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU.*device: auto"):
        resolve_device("cuda", "fp32")
    assert resolve_device("auto", "fp32").type == "cpu"


def test_bf16_on_a_gpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(DeviceError, match="bf16 needs a GPU with native bfloat16.*V100.*use fp16 or fp32"):
        resolve_device("cuda", "bf16")
    assert resolve_device("cuda", "fp16").type == "cuda"
