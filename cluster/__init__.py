"""Everything distributed, one room per job (each room imports only the rooms listed before it):

- `job/`      a job's config, run folder, storage URLs and Ray session
- `tracking/` MLflow: tracking store, runs, the metric sink, step metrics, figures
- `train/`    `mktn train`: launcher, workers, DeepSpeed engine, checkpoints, export
- `serve/`    trained models: load, `Predictor`, evaluate, register, the pyfunc model
- `tune/`     `mktn tune`: Ray Tune search over training jobs
- `demo/`     `mktn demo`: the whole pipeline on one machine
- `cli/`      the `mktn` command: argument parsing and printing, one module per command
"""
