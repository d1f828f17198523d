"""Everything distributed: Ray orchestration, DeepSpeed training, MLflow tracking/registry, the `mktn` CLI."""
