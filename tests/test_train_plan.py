"""The driver-side decisions of a training job, without Ray: shard assignment, the DeepSpeed config,
the preflight checks, resumable config changes, lockstep steps and the checkpoint state file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cluster.job.config import load_config
from cluster.job.run_folder import resumed_config
from cluster.train.assign import ShardInfo, assign_shards, read_dataset_shards, steps_lower_bound
from cluster.train.checkpoint import TrainState
from cluster.train.deepspeed_config import deepspeed_config
from cluster.train.lockstep import lockstep
from cluster.train.preflight import check_job
from data_pipeline.prepare import prepare_synthetic
from data_pipeline.shards import read_manifest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_synthetic(str(root), videos=40, val_videos=12, shard_size_mb=0.1, progress=False)
    return root


def _shards(sizes: list[int]) -> tuple[ShardInfo, ...]:
    return tuple(ShardInfo(f"s{i}", videos=max(q // 2, 1), queries=q) for i, q in enumerate(sizes))


def test_manifest_counts_per_shard(dataset: Path) -> None:
    data = read_dataset_shards(str(dataset / "train"))
    manifest = read_manifest(str(dataset / "train"))
    assert data.queries == sum(manifest.column("n_queries").to_pylist())
    assert data.videos == manifest.num_rows == 40
    assert data.max_group_queries == max(manifest.column("n_queries").to_pylist())
    assert len(data.shards) >= 4 and all(
        s.url.startswith(str(dataset / "train" / "shards")) for s in data.shards
    )


def test_lpt_balances_whole_shards_and_reshuffles_per_epoch() -> None:
    shards = _shards([30, 29, 17, 16, 15, 9, 8, 8, 7, 3])
    first = assign_shards(shards, 3, seed=0, epoch=0)
    assert sorted(s.url for rank in first.per_rank for s in rank) == sorted(s.url for s in shards)
    assert max(first.queries) - min(first.queries) <= 3  # LPT on these sizes: 48/47/47
    epochs = [assign_shards(shards, 3, seed=0, epoch=e).per_rank for e in range(4)]
    assert len({tuple(tuple(s.url for s in rank) for rank in per_rank) for per_rank in epochs}) > 1
    assert assign_shards(shards, 3, seed=0, epoch=2) == assign_shards(shards, 3, seed=0, epoch=2)


def test_assignment_needs_a_shard_per_worker() -> None:
    with pytest.raises(ValueError, match="2 shards cannot feed 3 workers"):
        assign_shards(_shards([5, 5]), 3, seed=0, epoch=0)


def test_steps_lower_bound_uses_both_budgets() -> None:
    assignment = assign_shards(_shards([40, 40]), 2, seed=0, epoch=0)  # 40 queries, 20 videos per rank
    assert steps_lower_bound(assignment, max_queries=16, max_videos=100) == 3
    assert steps_lower_bound(assignment, max_queries=100, max_videos=4) == 5


def test_deepspeed_config_from_the_job() -> None:
    job = load_config(
        str(CONFIG),
        [
            "deepspeed.zero_stage=3",
            "train.grad_accum=2",
            "train.grad_clip=0.5",
            "deepspeed.overrides={zero_optimization: {overlap_comm: true}, wall_clock_breakdown: true}",
        ],
    )
    ds = deepspeed_config(job, world_size=4, optimizer_steps=100)
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": True}  # merged, not replaced
    assert ds["wall_clock_breakdown"] is True
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": job.train.lr, "weight_decay": 0.01, "torch_adam": True},
    }
    assert ds["scheduler"]["params"]["total_num_steps"] == 100
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 10
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


def test_preflight_lists_every_impossible_combination(dataset: Path) -> None:
    train, val = read_dataset_shards(str(dataset / "train")), read_dataset_shards(str(dataset / "val"))
    job = load_config(
        str(CONFIG),
        [
            "cluster.num_workers=8",
            "deepspeed.zero_stage=3",
            "deepspeed.optimizer=sgd",
            "deepspeed.precision=fp16",
            "data.max_queries_per_batch=1",
            "train.best_metric=R1@0.9",
        ],
    )
    with pytest.raises(ValueError) as err:
        check_job(job, train, val, {"CPU": 2})
    message = str(err.value)
    assert "cluster.num_workers=8 needs 8 CPU (8 x 1) but the cluster has 2" in message
    assert "deepspeed.optimizer=sgd cannot be sharded by ZeRO stage 3" in message
    assert "deepspeed.precision=fp16 needs GPUs" in message
    assert (
        f"smaller than the largest video group of {dataset / 'train'} ({train.max_group_queries} queries)"
        in message
    )
    assert f"{dataset / 'val'}: {len(val.shards)} shards for cluster.num_workers=8" in message
    assert "train.best_metric='R1@0.9'" in message


def test_preflight_accepts_the_embedded_defaults(dataset: Path) -> None:
    train, val = read_dataset_shards(str(dataset / "train")), read_dataset_shards(str(dataset / "val"))
    check_job(load_config(str(CONFIG)), train, val, {"CPU": 2})
    with pytest.raises(ValueError, match="needs 2 GPU"):
        check_job(load_config(str(CONFIG), ["cluster.use_gpu=true"]), train, val, {"CPU": 2, "GPU": 1})


def test_resume_may_change_only_resumable_keys() -> None:
    saved = load_config(str(CONFIG))
    assert resumed_config(saved, None) == saved
    more = resumed_config(saved, load_config(str(CONFIG), ["train.epochs=20", "cluster.max_failures=5"]))
    assert (more.train.epochs, more.cluster.max_failures) == (20, 5)
    with pytest.raises(ValueError, match=r"cluster.num_workers: 2 -> 3, model.d_model: 64 -> 32"):
        resumed_config(saved, load_config(str(CONFIG), ["model.d_model=32", "cluster.num_workers=3"]))


def test_lockstep_single_process_yields_every_batch_once() -> None:
    steps = list(lockstep(lambda n: iter(["a", "b", "c"] if n == 0 else ["x"]), torch.device("cpu")))
    assert [(s.batch, s.fresh) for s in steps] == [("a", True), ("b", True), ("c", True)]


def test_checkpoint_state_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        TrainState.read(str(tmp_path))
    (tmp_path / "mktn_state.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="expected format 'mktn-checkpoint-v1'"):
        TrainState.read(str(tmp_path))
    state = TrainState(
        epochs_done=3, global_step=42, run_id="abc", world_size=2, zero_stage=3, metrics={"mIoU": 1.5}
    )
    (tmp_path / "mktn_state.json").write_text(state.to_json())
    assert TrainState.read(str(tmp_path)) == state
