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

# Import a stage's script (not as __main__, so it does not run) and every module
# it imports anywhere (inside a function too: the train stage imports MLflow's
# side only in the processes that train), and list the project's files (src/,
# stages/) that they loaded.
LIST_LOADED = """
import ast, importlib, json, runpy, sys
from pathlib import Path
root, script = Path(sys.argv[1]), Path(sys.argv[2])
runpy.run_path(str(script), run_name="dvc_deps_probe")
for node in ast.walk(ast.parse(script.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
        importlib.import_module(node.module)
loaded = {script.resolve()} | {Path(m.__file__).resolve() for m in list(sys.modules.values())
                               if getattr(m, "__file__", None)}
print(json.dumps(sorted(str(p.relative_to(root)) for p in loaded
                        if p.is_relative_to(root / "src") or p.is_relative_to(root / "stages"))))
"""


def loaded_project_files(script: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", LIST_LOADED, str(REPO_ROOT), str(REPO_ROOT / script)],
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
    loaded = loaded_project_files(script)
    missing = [path for path in loaded if not covered(path, stage["deps"])]
    assert not missing, f"dvc.yaml: stage '{name}' imports {missing} but does not list them in its deps"
