"""The job config schema: overrides, unknown keys with hints, wrong types, and a bounded fuzz of the loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.job.config import ConfigError, JobConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_every_shipped_config_validates():
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert paths, "configs/ has no YAML files"
    for path in paths:
        assert isinstance(load_config(str(path)), JobConfig)


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(
        str(ROOT / "configs/synthetic.yaml"),
        [
            "data.train=s3://b/train",
            "cluster.num_workers=3",
            "deepspeed.zero_stage=3",
            "model.csm.enabled=false",
            "train.lr=3e-4",
        ],
    )
    assert cfg.data.train == "s3://b/train"
    assert cfg.cluster.num_workers == 3
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.model.csm.enabled is False
    assert cfg.train.lr == pytest.approx(3e-4)


def test_unknown_key_suggests_the_closest_name():
    with pytest.raises(
        ConfigError, match=r"unknown key 'model\.avm\.shedule' \(did you mean 'model\.avm\.schedule'\?\)"
    ):
        load_config(None, ["model.avm.shedule=linear"])


def test_wrong_type_names_the_key_and_value():
    with pytest.raises(ConfigError, match=r"'deepspeed\.zero_stage'.*got 5"):
        load_config(None, ["deepspeed.zero_stage=5"])
    with pytest.raises(ConfigError, match=r"'train\.epochs'.*got 'many'"):
        load_config(None, ["train.epochs=many"])


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="'train' is a value, not a section"):
        load_config(None, ["train=1", "train.lr=2"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/config.yaml")


def test_non_mapping_yaml_is_rejected(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(bad))


def test_flat_params_cover_every_leaf():
    flat = load_config(None).flat()
    assert flat["deepspeed.zero_stage"] == 2
    assert flat["model.avm.schedule"] == "cosine"
    assert all(not isinstance(v, dict) or not v for v in flat.values())


_keys = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), min_size=1, max_size=4
)
_values = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20), st.none())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=_keys, value=_values)
def test_fuzzed_overrides_either_validate_or_raise_config_error(keys, value):
    """Any override is either accepted into a valid JobConfig or rejected with ConfigError: nothing else escapes."""
    try:
        cfg = load_config(None, [f"{'.'.join(keys)}={value}"])
    except ConfigError as exc:
        assert "invalid config" in str(exc) or "override" in str(exc)
    else:
        assert isinstance(cfg, JobConfig)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_fuzzed_yaml_files_never_crash(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(str(path))
    except ConfigError:
        pass
