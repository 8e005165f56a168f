"""What only reads runs back or times the numerics apart from the pipeline: the
report and its claims, the crossover map, the statistics both use.
"""
