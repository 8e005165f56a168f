"""The work of each DVC stage (stages/*.py call them): download, environment,
train (its torchrun launcher and its ranks), evaluate.
"""
