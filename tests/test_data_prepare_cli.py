"""`mktn prepare` end to end through the real command-line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import main
from data_pipeline.shards import read_dataset_info, read_manifest
from tests.conftest import write_npy_features


def test_prepare_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = f"file://{tmp_path}/syn"
    args = ["prepare", "synthetic", "--out", out, "--videos", "40", "--val-videos", "10", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    train, val = read_dataset_info(f"{out}/train"), read_dataset_info(f"{out}/val")
    assert f"{out}/train: 40 videos, {train['counts']['queries']} queries" in printed
    assert f"{out}/val: 10 videos" in printed and "skipped 0 items" in printed
    assert (train["split"], val["split"], train["tokens_per_clip"], train["feature_dim"]) == (
        "train",
        "val",
        5,
        64,
    )
    assert (tmp_path / "syn/train/vocab.json").read_text() == (tmp_path / "syn/val/vocab.json").read_text()
    assert set(read_manifest(f"{out}/train").column("split").to_pylist()) == {"train"}
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "3", "--patches", "0"]) == 0
    assert read_dataset_info(f"{out}/train")["tokens_per_clip"] == 1


def test_prepare_charades_orig_with_skip(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real lines of the 2D-TAN copy: the first 200 plus the four with START >= END."""
    lines = (shared_data / "charades_sta/charades_sta_train.orig.txt").read_text().splitlines()
    bad = [ln for ln in lines if float(ln.split()[1]) >= float(ln.split("##")[0].split()[2])]
    ann = tmp_path / "subset.txt"
    ann.write_text("\n".join(lines[:200] + bad) + "\n")
    write_npy_features(tmp_path / "feats", {ln.split()[0] for ln in lines[:200] + bad}, dim=6)
    common = [
        "prepare",
        "charades-sta",
        "--annotations",
        str(ann),
        "--features",
        str(tmp_path / "feats"),
        "--durations",
        str(shared_data / "charades_sta/Charades_v1_train.csv"),
        "--no-progress",
    ]
    assert main([*common, "--out", str(tmp_path / "a")]) == 2
    assert "subset.txt:201: start 8.0 >= end 7.0" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "b"), "--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    info = read_dataset_info(str(tmp_path / "b"))
    assert info["counts"]["queries"] == 200 and info["validation"]["skipped_queries"] == 4
    assert "skipped 4 items (4 queries)" in printed and "skipped: " in printed and "subset.txt:204" in printed
    assert info["source"]["format"] == "charades-sta"


def test_prepare_generic_and_moment_detr_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "g.jsonl"
    ann.write_text(
        json.dumps({"video_id": "v.1", "duration": 9, "start": 1, "end": 4, "sentence": "a cat sits"})
    )
    write_npy_features(tmp_path / "feats", ["v.1"])
    base = ["prepare", "generic", "--annotations", str(ann), "--out", "memory://cli/g", "--no-progress"]
    assert main([*base, "--features", str(tmp_path / "feats"), "--feature-dim", "8"]) == 0
    assert read_manifest("memory://cli/g").column("key").to_pylist() == ["v_1"]
    assert main([*base, "--features", str(tmp_path / "nope"), "--overwrite"]) == 2
    assert "feature directory not found" in capsys.readouterr().err
    assert main([*base, "--features", str(tmp_path / "feats"), "--feature-dim", "16", "--overwrite"]) == 2
    assert "feature dim 8, expected 16" in capsys.readouterr().err
    md = tmp_path / "m.jsonl"
    md.write_text(
        '{"qid": 1, "query": "q", "duration": 9, "vid": "v.1", "relevant_windows": [[1, 2]]}\n{"qid": 2}\n'
    )
    assert (
        main(
            [
                "prepare",
                "moment-detr",
                "--annotations",
                str(md),
                "--features",
                str(tmp_path / "feats"),
                "--out",
                str(tmp_path / "m"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "m.jsonl:2: missing key 'relevant_windows'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dataset", ["charades-sta", "activitynet", "tacos", "moment-detr", "generic", "synthetic"]
)
def test_help(dataset: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", dataset, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
