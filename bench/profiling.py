"""torch.profiler helpers: where a step's time goes (by MKTN component, forward and backward) and its peak memory.

Components are read off the Python call stack of each operator (`with_stack=True`): an op belongs
to the innermost `mktn/` source file that called it (`mktn/fusion.py` -> fusion; `mktn/layers.py` holds
shared helpers, so its caller's file counts). A backward op belongs to the component whose forward
op created its autograd node (matched by the autograd sequence number). The optimizer step and
anything outside `mktn/` are their own rows. Times are the profiler's self CPU times of torch ops
(Python frames only serve as labels), so the rows add up to the step's op time (profiling inflates
small ops: read shares, not absolute speed).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch._C._profiler import _EventType
from torch.autograd.profiler_util import EventList, FunctionEvent
from torch.profiler import ProfilerActivity, profile

MKTN_FRAME = re.compile(r"mktn/([\w/]+)\.py\(\d+\)")
PYTHON_FRAME = re.compile(r"^<built-in|\.py\(\d+\): ")
SHARED_HELPERS = {"layers"}  # files whose ops count for their caller
BACKWARD = "autograd::engine::evaluate_function"


@dataclass
class StepProfile:
    """Per-component milliseconds per call (forward, backward), and torch.profiler's op table."""

    components: dict[str, dict[str, float]]
    op_table: str

    def rows(self) -> list[dict[str, Any]]:
        """Table rows sorted by total time, with each component's share of the step."""
        total = sum(sum(v.values()) for v in self.components.values()) or 1.0
        ranked = sorted(self.components.items(), key=lambda kv: -sum(kv[1].values()))
        return [
            {
                "component": name,
                "forward ms": t["forward"],
                "backward ms": t["backward"],
                "share %": 100 * (t["forward"] + t["backward"]) / total,
            }
            for name, t in ranked
        ]


def profile_step(step: Callable[[], Any], calls: int = 2, top_ops: int = 15) -> StepProfile:
    """Profile `calls` calls of `step` (after one unprofiled warm-up call) and split the time by component."""
    step()
    with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
        for _ in range(calls):
            step()
    events = [e for e in prof.events() if not e.is_python_function]  # Python frames only label the ops
    labels = {e.id: _label(e) for e in events}
    forward_label = {
        e.sequence_nr: labels[e.id] for e in events if e.sequence_nr >= 0 and not _backward_node(e)
    }
    ms: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for e in events:
        node = _backward_node(e)
        if node is None:
            ms[labels[e.id]]["forward"] += e.self_cpu_time_total / 1e3 / calls
        else:
            ms[forward_label.get(node.sequence_nr, "other")]["backward"] += (
                e.self_cpu_time_total / 1e3 / calls
            )
    ops = EventList([a for a in prof.key_averages() if not PYTHON_FRAME.search(a.key)])
    table = ops.table(sort_by="self_cpu_time_total", row_limit=top_ops, max_name_column_width=48)
    return StepProfile(dict(ms), table)


def _label(event: FunctionEvent) -> str:
    """The component of an op: the innermost non-helper `mktn/` Python frame among its ancestors.

    With `with_stack=True` the profiler records Python calls as events named `file(line): function`,
    so an op's parent chain is its call stack.
    """
    node: FunctionEvent | None = event
    while node is not None:
        if node.name.startswith("Optimizer.") or "torch/optim/" in node.name:
            return "optimizer"
        match = MKTN_FRAME.search(node.name)
        if match and match.group(1).split("/")[-1] not in SHARED_HELPERS:
            return _component(match.group(1))
        node = node.cpu_parent
    return "other"


def _component(path: str) -> str:
    """`heads/span` -> head, `text/encoder` -> text, `model` -> model glue (gathers, losses), else the file name."""
    top = path.split("/")[0]
    if top == "heads":
        return "float_predictor" if path.endswith("float_predictor") else "head"
    if top == "model":
        return "model glue (gathers, losses)"
    return top


def _backward_node(event: FunctionEvent) -> FunctionEvent | None:
    """The `evaluate_function` event an op runs under, if it is part of the backward pass."""
    node: FunctionEvent | None = event
    while node is not None:
        if node.name.startswith(BACKWARD):
            return node
        node = node.cpu_parent
    return None


def peak_memory_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensor memory allocated by `fn` above what was live when it started.

    The CPU analogue of `torch.cuda.max_memory_allocated` minus the starting point: the running sum of
    the allocator's allocation/free events recorded by torch.profiler (`profile_memory=True`).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    sizes.sort()
    return max(itertools.accumulate(size for _, size in sizes), default=0)
