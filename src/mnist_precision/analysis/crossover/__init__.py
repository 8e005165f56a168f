"""Where each precision pays against fp32, by hidden width and batch size.

`command` is `mnist-precision crossover`; `measure` times the grid (torch);
`verdict` reads a map with the thresholds (no torch, for the report);
`output` writes the map's JSON, Markdown and heatmaps.
"""
