"""GPU check: DeepSpeed on one GPU runs one MKTN training step, writes and reloads one checkpoint, and exports it.

    python scripts/gpu_check.py                                   # configs/gpu.yaml: bf16, ZeRO-2, fused Adam
    python scripts/gpu_check.py --config configs/large_zero3_offload.yaml   # ZeRO-3 + CPU optimizer offload
    python scripts/gpu_check.py model.d_model=512 --out /tmp/gpu-check      # overrides; keep the checkpoint

The same pieces as a training worker (the job config, `deepspeed_config`, `build_model`, the engine of
`cluster.train.engine.build_engine`, the batch collate, `cluster.train.checkpoint.save`/`load`) and the
export that follows training (`cluster.train.export.model_from_checkpoint`: the consolidated weights must
load strictly into a fresh model), on a tiny synthetic batch, so a GPU node's setup (driver, CUDA torch,
DeepSpeed's op builds, bf16, ZeRO-3) is proven in a minute before a cluster job is launched on it. Where
`torch.cuda` is unavailable it prints "skipped: no GPU" and exits 0; `--cpu` runs the same check on CPU
(fp32, gloo) to test the script itself.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when the step and the checkpoint round trip worked (or there is no GPU to check)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=str(ROOT / "configs" / "gpu.yaml"), help="job YAML (configs/gpu.yaml)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--out", help="checkpoint folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU (fp32, gloo) to test this script")
    args = parser.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("skipped: no GPU (torch.cuda.is_available() is False)")
        return 0
    os.environ["DS_ACCELERATOR"] = "cpu" if args.cpu else "cuda"
    _single_process_group_env()
    overrides = [*args.overrides, "cluster.num_workers=1"]
    if args.cpu:
        overrides += [
            "cluster.use_gpu=false",
            "deepspeed.precision=fp32",
            "deepspeed.offload_optimizer=false",
        ]
    if args.out:
        return check(args.config, overrides, args.out)
    with tempfile.TemporaryDirectory(prefix="mktn-gpu-check-") as out:
        return check(args.config, overrides, out)


def check(config: str, overrides: list[str], out: str) -> int:
    """One training step, one checkpoint save + load and its export, of the job `config` on this process's device."""
    import torch

    from cluster.job.config import load_config
    from cluster.train import checkpoint
    from cluster.train.deepspeed_config import deepspeed_config
    from cluster.train.engine import EngineModel, build_engine
    from cluster.train.export import model_from_checkpoint
    from data_pipeline.batch import collate
    from data_pipeline.synthetic import generate
    from data_pipeline.text import Vocab
    from mktn.model import build_model

    job = load_config(config, overrides)
    device = torch.device("cuda", 0) if job.cluster.use_gpu else torch.device("cpu")
    groups = generate(8, seed=0, feature_dim=64, num_patches=4)
    vocab = Vocab.build(q.sentence for g in groups for q in g.queries)
    batch = collate(groups, vocab, job.data.max_clips, job.data.max_words).to(device)
    features = {"feature_dim": 64, "tokens_per_clip": 5, "dataset": "synthetic"}
    model = build_model(
        job.model, vocab, features["feature_dim"], features["tokens_per_clip"], job.data.max_clips
    ).to(device)
    params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them away
    ds_config = deepspeed_config(job, world_size=1, optimizer_steps=10)
    engine = build_engine(model, ds_config)
    print(
        f"device: {_device_name(device)}; model: {params / 1e6:.1f} M parameters; ZeRO-{job.deepspeed.zero_stage}, "
        f"bf16={ds_config['bf16']['enabled']}, offload_optimizer={job.deepspeed.offload_optimizer}"
    )

    started = time.perf_counter()
    output = EngineModel.output(engine(batch, progress=0.0))
    loss = output.losses["total"]
    engine.backward(loss)
    engine.step()
    _sync(device)
    step_s = time.perf_counter() - started
    if not math.isfinite(loss.item()):
        print(f"FAILED: the loss is {loss.item()}")
        return 1
    peak = (
        f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"step: loss {loss.item():.4f} on {batch.num_queries} queries / {batch.num_videos} videos in {step_s:.2f} s{peak}"
    )

    started = time.perf_counter()
    state = checkpoint.TrainState(global_step=1, world_size=1, zero_stage=job.deepspeed.zero_stage)
    checkpoint.save(engine, out, state, rank=0, files=checkpoint.model_files(job, model, features))
    restored = checkpoint.load(engine, out)
    size_mb = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file()) / 2**20
    print(
        f"checkpoint: {size_mb:.1f} MB written to {out} and loaded back (global step {restored.global_step}) "
        f"in {time.perf_counter() - started:.2f} s"
    )
    started = time.perf_counter()
    exported = model_from_checkpoint(out)  # strict: every consolidated tensor must fit the model by name
    print(
        f"export: {len(exported.state_dict())} tensors, "
        f"{sum(p.numel() for p in exported.parameters()) / 1e6:.1f} M parameters, in "
        f"{time.perf_counter() - started:.2f} s"
    )
    print("ok")
    return 0


def _single_process_group_env() -> None:
    """A one-rank process group on this machine (what Ray Train sets up for a real worker)."""
    from cluster.job.network import free_port

    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }.items():
        os.environ.setdefault(key, value)


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
