"""What every job stands on: its typed config, its run folder, the storage behind its URLs and the Ray
cluster it runs on.

- `config`      the job YAML's schema (`JobConfig`), dotted overrides, "did you mean" errors
- `run_folder`  `run.json`: what `--resume` continues (config, MLflow run, status)
- `storage`     fsspec URLs: filesystems, atomic writes, folder copies, reachability checks
- `ray_session` start a local Ray or join a cluster, after checking the job fits it
- `network`     a free TCP port (Ray's GCS, test and benchmark servers, process groups)
"""
