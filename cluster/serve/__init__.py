"""Trained models: find and load one, predict with it, evaluate it, register and serve it.

- `model_source`   open a run folder, checkpoint, exported folder or MLflow URI (`runs:/`, `models:/`)
- `predictor`      `Predictor`: the Python API (`from mktn import Predictor`), also behind `mktn predict`,
                   the pyfunc model and `mktn eval`
- `queries`        query rows (JSONL or table) parsed and checked, each problem a `RowError` of its row
- `evaluate`       a model on prepared shards: metrics, inference QPS/VPS, logged to MLflow
- `registry`       `mktn register`: a pyfunc model version with its metrics, config and lineage as tags
- `logged_model`   the layout of a registered model, read without running its code
- `pyfunc_model`, `pyfunc_entry`  the `mlflow.pyfunc` model (logged "from code") over a `Predictor`
- `predict_figure` `mktn predict --visualize`: a video's predicted and true moments
"""
