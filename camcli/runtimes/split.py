"""A model cut at a layer: the part before it on a runtime, the rest in PyTorch.

``torch.fx`` traces the model with the hooked layers kept whole (leaf modules). The cut is
exact only when the layer's output is the one value that flows from the part before it to
the part after it: a residual that skips past the layer (a layer inside a block whose input is
added back), the input image used again later, or a layer that runs twice cannot be cut, and
``split`` says which. The part after the layer starts from a ``Tap`` that stands where the layer
was; hooks on the tap see the layer's output exactly as the layer returned it, so
``camcli.hooks`` records it and, for gradient methods, differentiates the rest from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from camcli.layers import token_prefix


class SplitRefused(Exception):
    """The model cannot be cut at the layer exactly; the message says why, in one line."""


class Tap(nn.Module):
    """Stands for the cut layer in the part after it: returns what the runtime computed."""

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return activation


class _Leaves(fx.Tracer):
    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name in self.leaves or super().is_leaf_module(module, qualified_name)


@dataclass
class Split:
    """``before``: image -> the value at the cut; ``after``: that value -> the model's output.
    ``layer``: the first hooked layer; ``at``: where the cut is, for people (the layer itself,
    or the value before it that the rest needs); ``tap``: the module standing for the layer
    in ``after`` when the cut is at its output (else None: the layer runs in ``after``)."""

    layer: str
    at: str
    before: fx.GraphModule
    after: fx.GraphModule
    tap: Tap | None


def _crossing(nodes: list[fx.Node], last_use: dict[fx.Node, int], k: int) -> list[fx.Node]:
    """The values computed at or before position ``k`` that a later node uses."""
    return [n for n in nodes[: k + 1] if n.op != "get_attr" and last_use.get(n, -1) > k]


def split(model: nn.Module, layers: Sequence[str]) -> Split:
    """Cut ``model`` at the first of ``layers`` to run (the others stay in the part after it,
    as themselves): at the layer's output when that is all the rest needs, else at the latest
    value before it that is (a residual block's input, for a layer inside the block). Raises
    SplitRefused when there is none (or fx cannot trace the model)."""
    try:
        graph = _Leaves(set(layers)).trace(model)
    except Exception as exc:  # data-dependent control flow and the like: fx's own message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SplitRefused(f"torch.fx cannot trace the model ({first[:160]})") from None
    root = fx.GraphModule(model, graph)
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    calls = {name: [n for n in nodes if n.op == "call_module" and n.target == name]
             for name in layers}  # fmt: skip
    for name, found in calls.items():
        if len(found) != 1:
            how = "never runs" if not found else f"runs {len(found)} times"
            raise SplitRefused(f"layer {name} {how} in the traced model")
    first = min((found[0] for found in calls.values()), key=index.__getitem__)
    last_use: dict[fx.Node, int] = {}
    for node in nodes:
        for used in node.all_input_nodes:
            last_use[used] = max(last_use.get(used, -1), index[node])
    cut = None
    for k in range(index[first], 0, -1):
        node = nodes[k]
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if _crossing(nodes, last_use, k) == [node]:
            cut = node
            break
    if cut is None:
        raise SplitRefused(
            f"no single value before layer {first.target} carries all the rest of the model "
            "needs (the input image is used again later)"
        )
    position = index[cut]
    before_nodes, after_nodes = nodes[: position + 1], nodes[position + 1 :]

    before = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before_nodes:
        env[node] = before.node_copy(node, lambda n: env[n])
    before.output(env[cut])

    after = fx.Graph()
    start = after.placeholder("activation")
    tap = None
    if cut is first:
        tap = Tap()
        root.add_submodule("camcli_tap", tap)
        start = after.call_module("camcli_tap", (start,))
    env2: dict[fx.Node, fx.Node] = {cut: start}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env2:  # a parameter or constant read before the cut: read it again
            env2[node] = after.node_copy(node, lookup)
        return env2[node]

    for node in after_nodes:
        env2[node] = after.node_copy(node, lookup)
    at = str(first.target) if tap is not None else (
        str(cut.target) if cut.op == "call_module" else f"the value before {first.target}"
    )  # fmt: skip
    return Split(
        str(first.target), at, fx.GraphModule(root, before), fx.GraphModule(root, after), tap
    )


class SplitModel(nn.Module):
    """The model as ``run_before`` (the runtime: image -> the cut layer's output) then
    ``split.after`` in PyTorch. Modules of the part after the cut are the model's own, so
    hooks on them (the other layers) see what they saw in the model."""

    def __init__(
        self,
        model: nn.Module,
        split: Split,
        run_before: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.after = split.after
        self.cut = split.layer if split.tap is not None else None
        self._run_before = run_before
        prefix = token_prefix(model)
        if prefix is not None:
            self.num_prefix_tokens = prefix

    def forward(self, x: torch.Tensor) -> Any:
        activation = self._run_before(x).to(x.device)
        return self.after(activation)

    def hooked(self, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The explainer's layers with the cut one replaced by the tap."""
        return {
            name: (self.after.get_submodule("camcli_tap") if name == self.cut else module)
            for name, module in layers.items()
        }
