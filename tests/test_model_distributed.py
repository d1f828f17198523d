"""Cross-worker negatives: 2 gloo workers with gathered embeddings see exactly the single-process global batch."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from cluster.job.network import free_port
from tests.model_support import batch_of, model_for, small_config, tiny_groups

WORLD = 2


def _config(gather: bool):  # high phi keeps negatives, so L_CL is non-zero
    return small_config(gather_negatives=gather, avm={"phi_init": 0.8, "phi_final": 0.9})


def _cross_pair_loss(out) -> torch.Tensor:
    return out.losses["L_CL"] + out.losses["L_1"]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        groups = tiny_groups(4)
        model = model_for(groups, _config(gather=True))
        mine = groups[:1] if rank == 0 else groups[1:]  # uneven: different video, query, clip and word counts
        out = model(batch_of(mine, model), progress=0.3)
        _cross_pair_loss(out).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        for g in grads.values():  # the data-parallel average
            dist.all_reduce(g)
            g /= WORLD
        if rank == 0:
            losses = {k: out.losses[k].detach().reshape(1) for k in ("L_CL", "L_1")}
            save_file(
                {f"grad.{k}": v for k, v in grads.items()} | {f"loss.{k}": v for k, v in losses.items()},
                f"{out_dir}/rank0.safetensors",
            )
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_match_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    result = load_file(str(tmp_path / "rank0.safetensors"))

    groups = tiny_groups(4)
    model = model_for(groups, _config(gather=False))
    out = model(batch_of(groups, model), progress=0.3)
    _cross_pair_loss(out).backward()
    for key in ("L_CL", "L_1"):
        assert out.losses[key].item() > 0
        torch.testing.assert_close(result[f"loss.{key}"][0], out.losses[key].detach(), atol=1e-5, rtol=1e-5)
    checked = 0
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            torch.testing.assert_close(result[f"grad.{name}"], p.grad, atol=1e-5, rtol=1e-4, msg=name)
            checked += 1
    assert checked > 20  # encoders, AVM's zeta, OPM, APA and RINCE all receive the global gradient
