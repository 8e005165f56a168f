"""The numerics, with torch and nothing of MLflow or DVC: the data and its
download, the model, the precision policies, optimizers and rounding, the
training loop and its state, checkpoints, diagnostics, evaluation, devices and
threads, data-parallel training.
"""
