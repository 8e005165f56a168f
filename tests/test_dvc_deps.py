"""dvc.yaml's deps cover every module of the project that a stage's command imports,
so that `dvc status` can never call a stage up to date after its code changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]

# Import a stage's entry script (not as __main__, so it does not run) and its
# work module (which an entry may import only in the processes that run it), and
# list the project's files (src/, stages/) that they loaded.
LIST_LOADED = """
import importlib, json, runpy, sys
from pathlib import Path
root, script, module = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
runpy.run_path(str(script), run_name="dvc_deps_probe")
importlib.import_module(module)
loaded = {script.resolve()} | {Path(m.__file__).resolve() for m in list(sys.modules.values())
                               if getattr(m, "__file__", None)}
print(json.dumps(sorted(str(p.relative_to(root)) for p in loaded
                        if p.is_relative_to(root / "src") or p.is_relative_to(root / "stages"))))
"""


def loaded_project_files(script: str, module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", LIST_LOADED, str(REPO_ROOT), str(REPO_ROOT / script), module],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out)


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or Path(dep) in Path(path).parents for dep in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_module_is_a_dependency_of_the_stage(name):
    stage = STAGES[name]
    script = stage["cmd"].split()[1]  # "python stages/<name>.py"
    loaded = loaded_project_files(script, f"mnist_precision.pipeline.{name}_stage")
    missing = [path for path in loaded if not covered(path, stage["deps"])]
    assert not missing, f"dvc.yaml: stage '{name}' imports {missing} but does not list them in its deps"
