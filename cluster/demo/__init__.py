"""`mktn demo`: the README's main job on one machine, from synthetic data to a held-out evaluation."""
