"""`python -m mnist_precision.report`: the same as `mnist-precision report`."""

from ..entry import run_stage
from . import main

run_stage("report", main)
