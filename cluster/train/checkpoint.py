"""What a training checkpoint holds, and loading it without unpickling anything beyond tensors.

A checkpoint is one directory that Ray Train assembles from every rank's files:

    ds/...                 DeepSpeed's state: module, (ZeRO-sharded) optimizer, LR scheduler; one shard per rank
    latest, zero_to_fp32.py  written by DeepSpeed
    mktn_state.json        data position (epochs done, global step), MLflow run id, world size, ZeRO stage, metrics
    job.json               the resolved job config
    text_state.json        vocabulary + text encoder identity (`MKTN.text_state()`): predicts from raw sentences
    features.json          the feature spec the model was built for (dim, tokens per clip, dataset)
    val_predictions.json   the last validation's predictions (for the predicted-vs-true figure)

Every rank calls `save` (DeepSpeed's save is collective; a rank-0-only save hangs, ray #56997). Ray
commits a checkpoint only after all ranks reported it, and records it in its run snapshot only after
the upload finished, so an interrupted write leaves the previous checkpoint as the one a restart uses.

DeepSpeed's files are torch pickles; `safe_torch_load` makes every `torch.load` inside DeepSpeed run with
`weights_only=True`, allowing only the three plain DeepSpeed records its checkpoints contain.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cluster.job.config import JobConfig
    from mktn.model import MKTN

DS_TAG = "ds"
STATE_FILE = "mktn_state.json"
STATE_FORMAT = "mktn-checkpoint-v1"


@dataclass
class TrainState:
    """Where training stands: the data position a restart continues from, and the run it reports to."""

    epochs_done: int = 0
    global_step: int = 0
    run_id: str = ""
    world_size: int = 1
    zero_stage: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"format": STATE_FORMAT, **asdict(self)}, indent=2)

    @classmethod
    def read(cls, directory: str) -> TrainState:
        """The state of the checkpoint at `directory`; a missing or malformed file names what is wrong."""
        path = Path(directory) / STATE_FILE
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{directory}: not a training checkpoint (no {STATE_FILE})") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(obj, dict) or obj.pop("format", None) != STATE_FORMAT:
            raise ValueError(f"{path}: expected format {STATE_FORMAT!r}")
        try:
            return cls(**obj)
        except TypeError as exc:
            raise ValueError(f"{path}: unexpected fields ({exc})") from exc


def save(engine: Any, directory: str, state: TrainState, rank: int, files: dict[str, Any]) -> None:
    """Write this rank's part of a checkpoint into `directory` (all ranks must call it).

    Rank 0 adds `files` (name -> JSON-able object) and, last, the state file.
    """
    engine.save_checkpoint(directory, tag=DS_TAG)
    if rank == 0:
        for name, obj in files.items():
            Path(directory, name).write_text(json.dumps(obj))
        Path(directory, STATE_FILE).write_text(state.to_json())


def load(engine: Any, directory: str) -> TrainState:
    """Restore the DeepSpeed engine (module, optimizer shards, LR schedule) from `directory`; returns the state."""
    state = TrainState.read(directory)
    with safe_torch_load():
        path, _ = engine.load_checkpoint(directory, tag=DS_TAG)
    if path is None:
        raise FileNotFoundError(f"{directory}: DeepSpeed found no checkpoint under tag {DS_TAG!r}")
    return state


def model_files(job: JobConfig, model: MKTN, features: dict[str, Any]) -> dict[str, Any]:
    """The files `save` adds that rebuild the model without DeepSpeed (`export.model_from_checkpoint`): the job
    config, the text state, and the feature spec (`feature_dim`, `tokens_per_clip`, ...) with `max_clips`."""
    return {
        "job.json": job.model_dump(mode="json"),
        "text_state.json": model.text_state(),
        "features.json": features | {"max_clips": job.data.max_clips},
    }


def read_json(directory: str, name: str) -> Any:
    """A JSON file that rank 0 wrote into the checkpoint at `directory`."""
    path = Path(directory) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{directory}: checkpoint has no {name}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


@contextmanager
def safe_torch_load() -> Iterator[None]:
    """Inside, every `torch.load` (DeepSpeed's included) is `weights_only=True`: tensors and plain containers,
    plus DeepSpeed's loss-scaler, ZeRO-stage and fragment-address records. A planted pickle fails to load
    instead of running."""
    import torch
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
