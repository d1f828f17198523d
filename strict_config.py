"""`StrictConfig`, the base of every typed config section in the project (data, model, job, search).

Unknown keys and wrong types are errors, also on assignment; `cluster.job.config` turns pydantic's errors
into one line per key with a "did you mean" hint. It sits below every package (`data_pipeline`, `mktn`,
`cluster` all import it) and imports none of them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """A config section that forbids unknown keys and validates on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
