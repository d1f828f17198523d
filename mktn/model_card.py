"""`python -m mktn.model_card`: the module tree with parameter counts, for both backbones and both modes.

Counts are of a model built for the given feature shape and vocabulary size (defaults: I3D-like
1024-d features without patches, 64 clips, a 10k-word vocabulary, the default ModelConfig).
"""

from __future__ import annotations

import argparse
import sys

from torch import nn

from data_pipeline.text import Vocab
from mktn.config import ModelConfig
from mktn.model import build_model


def module_tree(model: nn.Module, max_depth: int = 2) -> list[str]:
    """One line per module down to `max_depth`: indented name, class and parameter count (trainable and total)."""
    lines = []
    for name, module in model.named_modules():
        depth = name.count(".") + 1 if name else 0
        if depth > max_depth:
            continue
        total = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        label = name.rsplit(".", 1)[-1] if name else "MKTN"
        lines.append(f"{'  ' * depth}{label} ({type(module).__name__}): {trainable:,} trainable / {total:,}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mktn.model_card", description=__doc__)
    parser.add_argument("--feature-dim", type=int, default=1024, help="clip feature dimension d_in")
    parser.add_argument("--tokens-per-clip", type=int, default=1, help="C+1 tokens per clip (1 = no patches)")
    parser.add_argument("--max-clips", type=int, default=64, help="clips per video after resampling")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="words in the vocabulary")
    parser.add_argument("--depth", type=int, default=2, help="module tree depth to print")
    args = parser.parse_args(argv)
    vocab = Vocab(f"w{i}" for i in range(args.vocab_size - 2))
    for backbone in ("span", "proposal_map"):
        for mode in ("multi_pair", "single_pair"):
            model = build_model(
                ModelConfig(backbone=backbone, mode=mode),
                vocab,
                args.feature_dim,
                args.tokens_per_clip,
                args.max_clips,
            )
            print(f"== backbone={backbone} mode={mode} ==")
            print("\n".join(module_tree(model, args.depth)))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
