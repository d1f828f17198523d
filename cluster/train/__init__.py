"""The training job: `mktn train` from config to exported model, on Ray Train workers under DeepSpeed ZeRO.

- `launcher`         the driver: run folder, Ray, MLflow run, `TorchTrainer`, export (`train(...)`)
- `preflight`        reject a job that cannot run on the cluster, before Ray starts a worker
- `plan`             what every worker needs, decided once on the driver (`TrainPlan`)
- `assign`           whole shards to workers, balanced by query count (greedy LPT)
- `worker`           the per-worker loop: epochs, steps, validation, checkpoints
- `lockstep`         equal step counts on every rank without dropping data
- `validation`       held-out validation sharded over the workers, scored on rank 0
- `engine`           the DeepSpeed engine (`build_engine`) and the wrapper ZeRO-3 needs
- `deepspeed_config` the DeepSpeed JSON generated from the job config
- `checkpoint`       what a checkpoint holds; loading it without unpickling
- `export`           a checkpoint (any ZeRO stage) -> a standalone fp32 model folder
"""
