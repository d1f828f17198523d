"""YAML read as plain data with a bound on its size after aliases: `yaml.safe_load` builds whatever the
aliases describe, and a 400-byte file naming a list nine times per level, seven levels deep, expands to
4.8 million values (and an error quoting it to a 35 MB line)."""

from __future__ import annotations

from typing import IO, Any

import yaml

MAX_YAML_VALUES = 100_000
"""Values a document may hold once its aliases are expanded (a job config holds about 100)."""


def load_yaml(stream: str | bytes | IO, max_values: int = MAX_YAML_VALUES) -> Any:
    """The document in `stream` as plain Python data, as `yaml.safe_load` reads it (no Python tags), after
    checking that it holds at most `max_values` values with its aliases expanded and that no value contains
    itself. Every refusal is a one-line `ValueError` (the caller names the file)."""
    loader = yaml.SafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, max_values)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ValueError(f"{' '.join(what.split())}{where}") from None
    except yaml.YAMLError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, limit: int) -> None:
    """Refuse a node graph whose tree (aliases expanded) has more than `limit` nodes or a cycle; each shared
    node is sized once, so the check costs the graph's size, not the tree's."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise ValueError(
                    f"a value contains itself through an alias (line {node.start_mark.line + 1})"
                )
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[id(node)] > limit:
            raise ValueError(
                f"aliases expand the document past {limit} values (line {node.start_mark.line + 1}); "
                "an alias bomb?"
            )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
