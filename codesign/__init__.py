"""The thin top layer: the `codesign` command, sweeps, the results store, Pareto fronts, plots, reports."""
