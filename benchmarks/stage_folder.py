"""A folder laid out like the project (params.yaml, data/mnist), where the real
train and evaluate stages run: what the benchmarks that time a stage process share."""

from __future__ import annotations

from pathlib import Path

import yaml

from mnist_precision.base import paths

REPO_ROOT = Path(__file__).resolve().parents[1]


def stage_folder(root: Path, data: Path, train: dict | None = None, **params) -> Path:
    """`root` with params.yaml's recipe, its `train` section updated by `train`
    and its top-level keys by `params`, and data/mnist linked to `data`."""
    recipe = yaml.safe_load((REPO_ROOT / paths.PARAMS).read_text())
    recipe |= params
    recipe["train"] |= train or {}
    (root / paths.PARAMS).write_text(yaml.safe_dump(recipe, sort_keys=False))
    (root / paths.DATA_DIR).parent.mkdir(parents=True, exist_ok=True)
    (root / paths.DATA_DIR).symlink_to(data.resolve())
    return root
