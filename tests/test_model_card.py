"""`python -m mktn.model_card` prints the module tree with parameter counts for both backbones and both modes."""

from __future__ import annotations

import re

import pytest

from data_pipeline.text import Vocab
from mktn.config import ModelConfig
from mktn.model import build_model
from mktn.model_card import main, module_tree


def test_model_card_lists_both_backbones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--feature-dim", "32", "--max-clips", "16", "--vocab-size", "100", "--depth", "1"]) == 0
    text = capsys.readouterr().out
    sections = re.findall(r"== backbone=(\w+) mode=(\w+) ==", text)
    assert sections == [
        ("span", "multi_pair"),
        ("span", "single_pair"),
        ("proposal_map", "multi_pair"),
        ("proposal_map", "single_pair"),
    ]
    assert "head (SpanHead)" in text and "head (ProposalMapHead)" in text and "csm (CSM)" in text


def test_counts_add_up() -> None:
    model = build_model(ModelConfig(d_model=16, num_heads=2), Vocab(["a", "b"]), 8, 3, 8)
    lines = module_tree(model, max_depth=1)
    total = int(re.search(r"MKTN \(MKTN\): ([\d,]+) trainable", lines[0]).group(1).replace(",", ""))
    children = [int(re.search(r": ([\d,]+) trainable", line).group(1).replace(",", "")) for line in lines[1:]]
    assert total == sum(p.numel() for p in model.parameters()) == sum(children)
