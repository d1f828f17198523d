"""`StrictConfig`, the base of every typed config section in the project (data, model, job, search).

Unknown keys, wrong types and floats that are not finite in float32 are errors, also on assignment; `cluster.job.config` turns pydantic's errors
into one line per key with a "did you mean" hint. It sits below every package (`data_pipeline`, `mktn`,
`cluster` all import it) and imports none of them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

FLOAT32_MAX = 3.4028234663852886e38


class StrictConfig(BaseModel):
    """A config section that forbids unknown keys, validates on assignment and refuses floats that are not
    finite in float32, the precision the model trains in (NaN, inf, 1e300)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _finite_in_float32(cls, value: Any) -> Any:
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError("must be finite in float32 (|x| <= 3.4e38)")
        return value
