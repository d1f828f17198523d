"""Multi-pair vs single-pair: throughput, memory and accuracy per backbone on three query mixes (issue 7).

Three contenders, same backbone and width, on the same synthetic batches (whole video groups under the
same query and video budget, so a step sees the same queries whoever runs it):
- single-pair, the baseline: `mode=single_pair` gives every query its own copy of its video, encoded
  per pair in one vectorised batch, and builds none of the cross-pair modules (CSM, AVM, OPM, APA);
- encode-once: the baseline's modules in multi-pair batching (each video encoded once, its queries
  gather it), which isolates what encoding once buys;
- MKTN: multi-pair with every cross-pair module (the method).

Cost model. A training step costs E per encoded video (`MKTN.encode_videos`, forward and backward) and
F per query (`MKTN.ground`: text, fusion, head, losses; in MKTN also the cross-pair modules). A video
with k queries is encoded k times single-pair and once multi-pair, so with the baseline's E and F the
best ratio encoding once can give is  ideal = k (E + F) / (E + k F).  E and F are timed separately,
interleaved with each other and with the full steps; ratios are medians of per-round paired ratios.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from bench.ablations import learning_run
from bench.common import Report, Table, Target, interleaved, median, parse, parser, publish
from bench.profiling import peak_memory_bytes, profile_step
from cluster.job.config import JobConfig, load_config
from data_pipeline.batch import Batch, budget_batches, collate
from data_pipeline.synthetic import MIXES, generate
from data_pipeline.text import Vocab
from data_pipeline.types import VideoGroup
from mktn.config import ModelConfig
from mktn.fit import synthetic_vocab
from mktn.model import MKTN, EncodedVideos, build_model

NAME = "mp_vs_sp"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
BACKBONES = ("span", "proposal_map")
CROSS_PAIR = ("csm", "avm", "opm", "apa")
VARIANTS: dict[str, dict[str, Any]] = {
    "single-pair": {"mode": "single_pair"},
    "encode-once": {"mode": "multi_pair", **{m: {"enabled": False} for m in CROSS_PAIR}},
    "MKTN": {"mode": "multi_pair"},
}
BASELINE, METHOD = "single-pair", "MKTN"
TRAINED = (BASELINE, METHOD)  # trained to the step budget for accuracy
# Accuracy runs: every span cell (the backbone issue 7 sets targets for) and proposal-map on Charades-like; the
# proposal map costs ~5x a span step, so its other mixes would not fit `make bench`'s 20 minutes.
ACCURACY_CELLS = {
    ("span", "charades"),
    ("span", "activitynet"),
    ("span", "tacos"),
    ("proposal_map", "charades"),
}
RATIO_GOAL = {"charades": 2.0, "activitynet": 3.0, "tacos": 8.0}
IDEAL_SHARE_GOAL = 90.0
MIB = 2**20


@dataclass(frozen=True)
class Setup:
    """How one query mix is benchmarked: clips per video, batch budgets, data sizes, timing rounds, steps."""

    max_clips: int
    max_queries: int
    max_videos: int
    train_videos: int
    val_videos: int
    epochs: int
    rounds: int

    def job(self, quick: bool) -> JobConfig:
        """configs/synthetic.yaml with this mix's clips and batch budgets (and the tiny model when `quick`)."""
        overrides = [
            f"data.max_clips={self.max_clips}",
            f"data.max_queries_per_batch={self.max_queries}",
            f"data.max_videos_per_batch={self.max_videos}",
            *(QUICK_MODEL if quick else []),
        ]
        return load_config(str(CONFIG), overrides)


FULL = {  # every mix at the embedded default of 32 clips; TACoS-like: one video (~130 queries) per batch
    "charades": Setup(32, 48, 16, train_videos=240, val_videos=80, epochs=6, rounds=5),
    "activitynet": Setup(32, 48, 16, train_videos=160, val_videos=60, epochs=6, rounds=5),
    "tacos": Setup(32, 256, 1, train_videos=6, val_videos=3, epochs=3, rounds=3),
}
QUICK = {  # mktn.fit's one-cycle schedule needs >= 2 epochs of >= 2 steps
    "charades": Setup(8, 12, 4, train_videos=8, val_videos=3, epochs=2, rounds=1),
    "activitynet": Setup(8, 12, 4, train_videos=6, val_videos=3, epochs=2, rounds=1),
    "tacos": Setup(8, 256, 1, train_videos=2, val_videos=1, epochs=2, rounds=1),
}
QUICK_MODEL = ["model.d_model=16"]


def model_config(base: ModelConfig, backbone: str, variant: str) -> ModelConfig:
    """`base` with `backbone` and the variant's mode and module switches."""
    tree = base.model_dump() | {"backbone": backbone}
    for key, value in VARIANTS[variant].items():
        tree[key] = tree[key] | value if isinstance(value, dict) else value
    return ModelConfig.model_validate(tree)


class Contender:
    """One variant's model and optimizer, and the step functions the benchmark times on a batch."""

    def __init__(self, model: MKTN, lr: float):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self._encoded: dict[int, EncodedVideos] = {}

    def train_step(self, batch: Batch) -> None:
        """Forward, backward and AdamW step: what training does per batch."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.model(batch).losses["total"].backward()
        self.optimizer.step()

    @torch.no_grad()
    def infer(self, batch: Batch) -> None:
        """Ground and decode the top-5 moments of every query: what serving does per batch."""
        self.model.eval()
        self.model.decode(self.model(batch, compute_loss=False), batch, top_k=5)

    def videos(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The videos this variant encodes: the batch's, or one copy per query single-pair (as `MKTN.forward`)."""
        if self.model.cfg.cross_pair:
            return batch.video_feats, batch.video_mask
        return batch.video_feats[batch.query_video], batch.video_mask[batch.query_video]

    def query_videos(self, batch: Batch) -> torch.Tensor:
        """Each query's index into `videos(batch)`."""
        return batch.query_video if self.model.cfg.cross_pair else torch.arange(batch.num_queries)

    def encode_step(self, batch: Batch) -> None:
        """E: forward and backward of the per-video work alone (unit upstream gradients)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.model.encode_videos(*self.videos(batch), with_pairs=True).outputs()
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])

    def encode_once(self, batch: Batch) -> None:
        """Encode `batch`'s videos ahead of `ground_step`, outside the timed region."""
        with torch.no_grad():
            self._encoded[id(batch)] = self.model.encode_videos(*self.videos(batch), with_pairs=True)

    def ground_step(self, batch: Batch) -> None:
        """F: forward and backward of everything after the video encoder, from the videos `encode_once` encoded."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        leaf = self._encoded[id(batch)].detached()
        self.model.ground(batch, leaf, self.query_videos(batch)).losses["total"].backward()

    def encoded_videos(self, batch: Batch) -> int:
        """How many video encodings a step on `batch` runs: one per video, or one per query single-pair."""
        return batch.num_videos if self.model.cfg.cross_pair else batch.num_queries


def run_cell(backbone: str, mix: str, setup: Setup, job: JobConfig, profiles: Path | None) -> dict[str, Any]:
    """Every measurement of one (backbone, mix): throughput, cost split, memory, profiles and accuracy.

    `job` is `setup.job(...)`; the accuracy runs train with its recipe through `bench.ablations.learning_run`
    (learning rate, warm-up, clipping, weight decay), as the learning test and the ablations do."""
    train = generate(setup.train_videos, 0, query_mix=mix, split="train")
    val = generate(setup.val_videos, 1, query_mix=mix, split="val")
    vocab = synthetic_vocab(train)
    batches = [
        collate(c, vocab, job.data.max_clips)
        for c in budget_batches(train, job.data.max_queries_per_batch, job.data.max_videos_per_batch)
    ]
    contenders = {v: Contender(_build(job, backbone, v, vocab, train), job.train.lr) for v in VARIANTS}
    pick = lambda r: batches[r % len(batches)]  # noqa: E731 - round r's shared batch
    warmup = 1
    kept = [pick(r) for r in range(warmup, warmup + setup.rounds)]
    queries = np.array([b.num_queries for b in kept], dtype=float)
    videos = np.array([b.num_videos for b in kept], dtype=float)

    train_t = interleaved({v: _bind(c.train_step, pick) for v, c in contenders.items()}, setup.rounds, warmup)
    infer_t = interleaved({v: _bind(c.infer, pick) for v, c in contenders.items()}, setup.rounds, warmup)
    for c in contenders.values():
        for batch in {id(b): b for b in map(pick, range(warmup + setup.rounds))}.values():
            c.encode_once(batch)
    split_calls = {
        f"{part}:{v}": _bind(getattr(c, f"{part}_step"), pick)
        for v, c in contenders.items()
        for part in ("encode", "ground")
    }
    split_t = interleaved(split_calls, setup.rounds, warmup)

    cell: dict[str, Any] = {
        "backbone": backbone,
        "mix": mix,
        "k": float(queries.sum() / videos.sum()),
        "k_nominal": MIXES[mix].mean_queries,
        "setup": setup.__dict__,
        "variants": {},
    }
    for v, c in contenders.items():
        train_s, infer_s = np.array(train_t[v]), np.array(infer_t[v])
        encoded = np.array([c.encoded_videos(b) for b in kept], dtype=float)
        cell["variants"][v] = {
            "train_qps": median(queries / train_s),
            "train_vps": median(videos / train_s),
            "infer_qps": median(queries / infer_s),
            "infer_vps": median(videos / infer_s),
            "train_ratio": median(np.array(train_t[BASELINE]) / train_s),
            "infer_ratio": median(np.array(infer_t[BASELINE]) / infer_s),
            "E_ms_per_video": 1e3 * median(np.array(split_t[f"encode:{v}"]) / encoded),
            "F_ms_per_query": 1e3 * median(np.array(split_t[f"ground:{v}"]) / queries),
            "train_peak_mib": peak_memory_bytes(lambda c=c: c.train_step(kept[0])) / MIB,
            "infer_peak_mib": peak_memory_bytes(lambda c=c: c.infer(kept[0])) / MIB,
        }
    base_cost = cell["variants"][BASELINE]
    e, f, k = base_cost["E_ms_per_video"], base_cost["F_ms_per_query"], cell["k"]
    cell["ideal"] = k * (e + f) / (e + k * f)
    if profiles is not None:
        cell["profiles"] = {}
        for v in TRAINED:
            prof = profile_step(lambda v=v: contenders[v].train_step(kept[0]))
            path = profiles / f"{backbone}_{mix}_{v}.txt"
            path.write_text(prof.op_table)
            cell["profiles"][v] = {"components": prof.rows(), "op_table": str(path)}
    cell["accuracy"] = {}
    for v in TRAINED if (backbone, mix) in ACCURACY_CELLS else ():
        result = learning_run(job, {"backbone": backbone} | VARIANTS[v], (train, val), setup.epochs)
        steps = setup.epochs * len(batches)
        cell["accuracy"][v] = result.metrics | {
            "steps": steps,
            "train_seconds": result.seconds,
            "final_loss": result.final_loss,
        }
    return cell


def _build(job: JobConfig, backbone: str, variant: str, vocab: Vocab, groups: list[VideoGroup]) -> MKTN:
    """A freshly initialised model (same seed for every variant) for the features of `groups`."""
    torch.manual_seed(0)
    shape = groups[0].features.shape
    cfg = model_config(job.model, backbone, variant)
    return build_model(cfg, vocab, shape[-1], shape[1] if len(shape) == 3 else 1, job.data.max_clips)


def _bind(step: Callable[[Batch], None], pick: Callable[[int], Batch]) -> Callable[[int], None]:
    return lambda r: step(pick(r))


def fill_report(report: Report, cells: list[dict[str, Any]]) -> None:
    """Tables, targets (span backbone, as issue 7 sets them) and flat metrics from the measured cells."""
    report.data["cells"] = cells
    throughput, split, inference, memory, accuracy = [], [], [], [], []
    for cell in cells:
        key = {"backbone": cell["backbone"], "mix": cell["mix"]}
        var = cell["variants"]
        throughput.append(
            key
            | {"k": cell["k"]}
            | {f"{v} QPS": var[v]["train_qps"] for v in VARIANTS}
            | {f"{v} VPS": var[v]["train_vps"] for v in VARIANTS}
            | {f"{v}/single-pair": var[v]["train_ratio"] for v in VARIANTS if v != BASELINE}
        )
        split.append(
            key
            | {
                "k": cell["k"],
                "E ms/video": var[BASELINE]["E_ms_per_video"],
                "F ms/query": var[BASELINE]["F_ms_per_query"],
                "MKTN F ms/query": var[METHOD]["F_ms_per_query"],
                "ideal k(E+F)/(E+kF)": cell["ideal"],
                "encode-once measured": var["encode-once"]["train_ratio"],
                "encode-once % of ideal": 100 * var["encode-once"]["train_ratio"] / cell["ideal"],
                "MKTN measured": var[METHOD]["train_ratio"],
                "MKTN % of ideal": 100 * var[METHOD]["train_ratio"] / cell["ideal"],
            }
        )
        inference.append(
            key
            | {f"{v} QPS": var[v]["infer_qps"] for v in VARIANTS}
            | {f"{v} VPS": var[v]["infer_vps"] for v in VARIANTS}
            | {f"{v}/single-pair": var[v]["infer_ratio"] for v in VARIANTS if v != BASELINE}
        )
        memory.append(
            key
            | {f"{v} train": var[v]["train_peak_mib"] for v in VARIANTS}
            | {f"{v} inference": var[v]["infer_peak_mib"] for v in VARIANTS}
        )
        for v, acc in cell["accuracy"].items():
            accuracy.append(
                key
                | {
                    "variant": v,
                    "steps": acc["steps"],
                    "R1@0.5": acc["R1@0.5"],
                    "R1@0.7": acc["R1@0.7"],
                    "R5@0.5": acc["R5@0.5"],
                    "mIoU": acc["mIoU"],
                    "final loss": acc["final_loss"],
                }
            )
        for name, value in _flat(cell).items():
            report.metrics[f"{cell['backbone']}/{cell['mix']}/{name}"] = value
    report.tables += [
        Table(
            "Training throughput (queries/s, videos/s; ratios are medians of paired per-batch ratios)",
            throughput,
        ),
        Table(
            "Cost split of a training step (baseline E per encoded video, F per query; ms) and the ideal ratio",
            split,
            note="E = `MKTN.encode_videos`, F = `MKTN.ground` (text, fusion, head, losses; in MKTN also "
            "CSM/AVM/OPM/APA), each forward + backward, timed separately and interleaved.",
        ),
        Table("Inference throughput (ground + top-5 decode, no gradient)", inference),
        Table("Peak tensor memory of one step above the resident model and optimizer (MiB)", memory),
        Table("Accuracy on held-out synthetic videos after the same step budget (percent)", accuracy),
    ]
    for cell in cells:
        for v, prof in cell.get("profiles", {}).items():
            report.tables.append(
                Table(
                    f"Where a {v} training step goes: {cell['backbone']}, {cell['mix']} "
                    f"(torch.profiler; op table in {Path(prof['op_table']).name})",
                    prof["components"],
                )
            )
    report.tables += [
        Table(
            f"What F could give: the ideal ratio if one per-query component of the {BASELINE} step ran once per "
            f"video instead ({cell['backbone']}, {cell['mix']}, k={cell['k']:.1f}; shares from its profile)",
            what_if(cell),
        )
        for cell in cells
        if "profiles" in cell
    ]
    report.targets += _targets([c for c in cells if c["backbone"] == "span"])


def what_if(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Per F component of the baseline's profile: its share of F and the ideal k(E+F)/(E+kF) were it per-video.

    The first row is the profile's own split (nothing moved); the bound, everything per video, is k.
    """
    ms = {
        r["component"]: r["forward ms"] + r["backward ms"] for r in cell["profiles"][BASELINE]["components"]
    }
    e, k = ms.pop("video_encoder", 0.0), cell["k"]
    ms.pop("optimizer", None)
    f = sum(ms.values()) or 1.0
    ideal = lambda e_, f_: k * (e_ + f_) / (e_ + k * f_)  # noqa: E731 - the issue's formula
    rows = [{"moved to per-video": "nothing (as built)", "share of F %": 0.0, "ideal ratio": ideal(e, f)}]
    rows += [
        {"moved to per-video": name, "share of F %": 100 * t / f, "ideal ratio": ideal(e + t, f - t)}
        for name, t in sorted(ms.items(), key=lambda kv: -kv[1])
    ]
    late = ms.get("fusion", 0.0) + ms.get("head", 0.0)
    rows.append(
        {
            "moved to per-video": "fusion + head (late interaction: only text and scoring per query)",
            "share of F %": 100 * late / f,
            "ideal ratio": ideal(e + late, f - late),
        }
    )
    return rows


def _targets(cells: list[dict[str, Any]]) -> list[Target]:
    out = []
    for cell in cells:
        mix, var, ideal = cell["mix"], cell["variants"], cell["ideal"]
        acc = cell["accuracy"]
        out += [
            Target(
                f"span {mix}: MKTN/single-pair train QPS",
                var[METHOD]["train_ratio"],
                RATIO_GOAL[mix],
                note=f"k={cell['k']:.1f}, ideal {ideal:.2f}",
            ),
            Target(
                f"span {mix}: MKTN train ratio, % of ideal",
                100 * var[METHOD]["train_ratio"] / ideal,
                IDEAL_SHARE_GOAL,
            ),
            Target(
                f"span {mix}: encode-once train ratio, % of ideal",
                100 * var["encode-once"]["train_ratio"] / ideal,
                IDEAL_SHARE_GOAL,
                note="multi-pair batching alone, same modules as the baseline",
            ),
            Target(
                f"span {mix}: MKTN/single-pair inference VPS", var[METHOD]["infer_ratio"], RATIO_GOAL[mix]
            ),
            Target(
                f"span {mix}: R1@0.5 MKTN minus single-pair (points)",
                acc[METHOD]["R1@0.5"] - acc[BASELINE]["R1@0.5"],
                0.0,
                note=f"after {acc[METHOD]['steps']} steps",
            ),
        ]
    return out


def _flat(cell: dict[str, Any]) -> dict[str, float]:
    """The cell's numbers as flat MLflow metric names."""
    out = {"k": cell["k"], "ideal": cell["ideal"]}
    for v, values in cell["variants"].items():
        out |= {f"{v}/{name}": value for name, value in values.items()}
    for v, acc in cell["accuracy"].items():
        out |= {f"{v}/{name}": value for name, value in acc.items()}
    return out


def plot(report: Report) -> Figure:
    """Per backbone: training QPS per variant, measured ratios against the ideal and the goal, R1@0.5."""
    cells = report.data["cells"]
    fig, axes = plt.subplots(len(BACKBONES), 3, figsize=(15, 4 * len(BACKBONES)), squeeze=False)
    for row, backbone in zip(axes, BACKBONES):
        mine = [c for c in cells if c["backbone"] == backbone]
        mixes = [c["mix"] for c in mine]
        x = np.arange(len(mine))
        for i, v in enumerate(VARIANTS):
            row[0].bar(x + (i - 1) * 0.27, [c["variants"][v]["train_qps"] for c in mine], 0.27, label=v)
        row[0].set(title=f"{backbone}: training queries/s", xticks=x, xticklabels=mixes, yscale="log")
        row[0].legend(fontsize=8)
        for v in VARIANTS:
            if v != BASELINE:
                row[1].plot(
                    mixes, [c["variants"][v]["train_ratio"] for c in mine], "o-", label=f"{v} measured"
                )
        row[1].plot(mixes, [c["ideal"] for c in mine], "k--", label="ideal k(E+F)/(E+kF)")
        row[1].plot(mixes, [RATIO_GOAL[m] for m in mixes], "r:", label="issue 7 goal")
        row[1].axhline(1.0, color="gray", linewidth=0.8)
        row[1].set(title=f"{backbone}: training speed-up over single-pair", yscale="log")
        row[1].legend(fontsize=8)
        for i, v in enumerate(TRAINED):
            row[2].bar(
                x + (i - 0.5) * 0.4,
                [c["accuracy"].get(v, {}).get("R1@0.5", np.nan) for c in mine],
                0.4,
                label=v,
            )
        row[2].set(title=f"{backbone}: R@1 IoU=0.5 (%) after the same steps", xticks=x, xticklabels=mixes)
        row[2].legend(fontsize=8)
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run every (backbone, mix) cell and publish the report."""
    args = parse(parser(NAME, __doc__.split("\n\n")[0]), argv)
    report = Report(NAME, args.quick)
    setups = QUICK if args.quick else FULL
    profiles = args.results / f"{NAME}_profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    grid = list(itertools.product(BACKBONES, setups.items()))
    cells = [
        run_cell(
            b, mix, setup, setup.job(args.quick), profiles if not args.quick or mix == "charades" else None
        )
        for b, (mix, setup) in tqdm(grid, desc="bench.mp_vs_sp cells (backbone x mix)", unit="cell")
    ]  # --quick profiles one mix per backbone
    fill_report(report, cells)
    report.files += sorted(profiles.glob("*.txt"))
    publish(report, args.results, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
