"""The `environment` stage: write where the pipeline runs to environment.json.

DVC runs it on every `dvc repro` (`always_changed`); the file is rewritten
only when the description changed, so `train` and `evaluate`, which depend on
it, rerun on another machine or software and are skipped everywhere else.
"""

import json

from mnist_precision.base import paths
from mnist_precision.base.atomic import atomic_write_bytes
from mnist_precision.base.environment import describe
from mnist_precision.base.params import load


def main() -> None:
    description = describe(load(paths.PARAMS).device)
    text = json.dumps(description, indent=2, sort_keys=True) + "\n"
    try:
        unchanged = paths.ENVIRONMENT.read_text() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        atomic_write_bytes(paths.ENVIRONMENT, text.encode())
    where = description.get("cpu") or description["gpu"]
    print(
        f"environment: {description['device']} ({where}), torch {description['torch']}: "
        f"{'unchanged' if unchanged else f'written to {paths.ENVIRONMENT}'}"
    )
