"""`python -m mnist_precision.crossover`: the command without the console script (a bare GPU machine)."""

from ..entry import run_stage
from .command import main

run_stage("crossover", main)
