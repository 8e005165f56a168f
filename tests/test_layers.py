"""The package's layers and the direction of their imports (docs/architecture.md):
every import of every module, at its top or inside a function, read from the source."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "mnist_precision"
LAYERS = ("base", "core", "tracking", "analysis", "operations")
# What each layer may import of the project; the package root (the CLI) may import any.
MAY_IMPORT = {
    "base": {"base"},
    "core": {"base", "core"},
    "tracking": {"base", "core", "tracking"},
    "analysis": {"base", "core", "tracking", "analysis"},
    "operations": {"base", "tracking", "operations"},
    "stages": {"base", "core", "tracking"},
}
# Libraries a layer never imports: the numerics stand on torch alone, the base on neither.
NEVER = {"base": ("torch", "mlflow", "dvc"), "core": ("mlflow", "dvc")}


def imports(path: Path, module: str) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


def modules() -> list[tuple[str, str, Path]]:
    """(layer, dotted name, path) of every module of the package and of stages/."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        layer = parts[1] if len(parts) > 2 else "root"
        found.append((layer, ".".join(parts), path))
    found += [("stages", f"stages.{path.stem}", path) for path in sorted((REPO_ROOT / "stages").glob("*.py"))]
    return found


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "mnist_precision" and len(parts) > 2 and parts[1] in LAYERS else None


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for layer, module, path in modules():
        for name in sorted(imports(path, module)):
            target = layer_of(name)
            if layer in MAY_IMPORT and target and target not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) imports {name} ({target})")
            if any(name == library or name.startswith(library + ".") for library in NEVER.get(layer, ())):
                wrong.append(f"{module} ({layer}) imports {name}")
    assert wrong == []


def test_the_package_root_holds_few_modules_and_every_layer_is_a_folder():
    root = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(root) <= 6 and "cli.py" in root, root  # at most 5 modules beside __init__.py
    assert {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()} == set(LAYERS)


def test_no_two_modules_are_named_a_letter_apart():
    names = sorted({path.stem for path in PACKAGE.rglob("*.py") if not path.stem.startswith("__")})

    def a_letter_apart(a: str, b: str) -> bool:
        if abs(len(a) - len(b)) > 1:
            return False
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b, strict=True)) == 1
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))

    assert [(a, b) for a, b in itertools.combinations(names, 2) if a_letter_apart(a, b)] == []


def test_the_contract_catches_a_forbidden_import(tmp_path):
    """The reader sees imports inside functions and relative ones, as the contract needs."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import mlflow.server\n    from ..analysis import stats\n")
    assert {"mlflow.server", "mnist_precision.analysis", "mnist_precision.analysis.stats"} <= imports(
        module, "mnist_precision.core.m"
    )
