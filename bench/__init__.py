"""devicefabric's benchmarks: every figure a ratio against its floor, measured in the same run.

`python -m bench` runs all six and prints one summary table (`--quick` for a few minutes in all);
each runs alone too, e.g. `python -m bench.propagation --help`. Each writes
`bench/results/<name>.json` (machine, versions, parameters, raw samples, median, p99). Never part
of `make test`. See `bench/harness.py` (statistics, results, tables) and `bench/fabric.py` (the
processes a benchmark starts, always stopped).
"""
