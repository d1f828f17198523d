"""Reproducible benchmarks: multi-pair vs single-pair, data pipeline, ZeRO stages, worker scaling, MFU.

Each module runs as `python -m bench.<name> [--quick]`, prints markdown tables, and writes
`bench/results/<name>.json`, `<name>.png` and an MLflow run; `python -m bench.run_all` runs them all.
"""
