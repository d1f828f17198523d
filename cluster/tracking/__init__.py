"""MLflow: where a job tracks, its runs, and the metrics and figures that reach them.

- `store`       the tracking URI (embedded SQLite under the run folder by default) and artifact locations
- `retry`       `retrying`: every MLflow call waits out an unreachable server, for a configured patience
- `runs`        the one way a run is opened (experiment, tags, params, git commit), tags and metrics logged
- `metric_sink` the Ray actor that spools step metrics to disk and ships each (key, step) to MLflow once
- `step_log`    per-step training metrics, reduced across ranks, as the sink's records
- `plots`       the run's figures: training curves, predicted vs true moments
"""
