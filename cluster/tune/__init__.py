"""`mktn tune`: hyper-parameter search with Ray Tune (ASHA), every trial a full training job.

- `space`   the search-space YAML, validated against the job schema before Ray starts
- `search`  the search itself: trials, MLflow parent/child runs, resume, registering the best
- `results` one row per trial, the best trial, results.csv/parquet and the metric plot
"""
