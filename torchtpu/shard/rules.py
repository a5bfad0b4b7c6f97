"""Sharding rules as data: a parameter-name pattern and the partition spec it gets.

A rule's spec has one entry per dimension of the tensor: a mesh axis name, a
tuple of axis names, or ``None`` (not split). The first rule whose pattern
``re.search``-es a parameter's name decides its spec; a parameter no rule
matches is replicated (or, under FSDP, split over the FSDP axis).

The ready-made sets are Megatron's column and row parallel layers for the
attention and MLP blocks of two model families (the names are Hugging Face's):

- ``"llama"``: ``nn.Linear`` weights are ``(out, in)``. ``q_proj``, ``k_proj``,
  ``v_proj``, ``gate_proj`` and ``up_proj`` are split by output (column
  parallel), ``o_proj`` and ``down_proj`` by input (row parallel), so each
  block needs one all-reduce forward and one backward.
- ``"gpt2"``: ``Conv1D`` weights are ``(in, out)``. ``c_attn`` and ``c_fc``
  are column parallel (with their biases), the two ``c_proj`` row parallel.
  ``c_attn`` packs q, k and v along its output, so a split of it crosses the
  q/k/v boundary and XLA adds a collective to re-split the heads.

Embeddings stay replicated in both (GPT-2's vocabulary, 50257, divides by no
mesh axis).

- ``"experts"``: expert parallelism. The stacked expert weights of Hugging
  Face's mixture-of-experts layers (``mlp.experts.gate_up_proj`` (E, 2I, H),
  ``mlp.experts.down_proj`` (E, H, I), and ``up_proj`` and the biases where a
  model has them: Mixtral, Qwen2-MoE, DeepSeek-V3, GPT-OSS) are split on their
  first dimension, the experts, over the ``expert`` axis. Routers and shared
  experts stay whole.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from torchtpu.errors import ShardingError

Spec = tuple[Any, ...]
MODEL_AXIS = "model"
EXPERT_AXIS = "expert"


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (a regex searched in the parameter's name) -> ``spec``.

    ``required``: a rule that matches no parameter of the model is an error
    (a typo in a pattern would otherwise silently leave a layer replicated).
    """

    pattern: str
    spec: Spec
    required: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_regex", re.compile(self.pattern))
        except re.error as exc:
            raise ShardingError(f"sharding rule {self.pattern!r}: not a regex ({exc})") from exc
        object.__setattr__(self, "spec", tuple(self.spec))

    def matches(self, name: str) -> bool:
        return self._regex.search(name) is not None  # type: ignore[attr-defined]


def _megatron(column: str, row: str, column_bias: str | None, transposed: bool) -> list[Rule]:
    col, row_spec = (MODEL_AXIS, None), (None, MODEL_AXIS)
    if transposed:  # Conv1D stores (in, out)
        col, row_spec = row_spec, col
    rules = [Rule(column, col), Rule(row, row_spec)]
    if column_bias is not None:
        rules.append(Rule(column_bias, (MODEL_AXIS,), required=False))
    return rules


RULE_SETS: dict[str, list[Rule]] = {
    "llama": _megatron(
        r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight$",
        r"\.(o_proj|down_proj)\.weight$",
        r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.bias$",  # Qwen-style q/k/v biases
        transposed=False,
    ),
    "gpt2": _megatron(
        r"\.(attn\.c_attn|mlp\.c_fc)\.weight$",
        r"\.(attn|mlp)\.c_proj\.weight$",
        r"\.(attn\.c_attn|mlp\.c_fc)\.bias$",
        transposed=True,
    ),
    "experts": [
        Rule(r"\.experts\.(gate_up_proj|up_proj|down_proj)$", (EXPERT_AXIS,)),
        Rule(r"\.experts\.(gate_up_proj|up_proj|down_proj)_bias$", (EXPERT_AXIS,), required=False),
    ],
}

# What identifies a family in a model's parameter names, for rules="auto".
_FAMILY_MARKS = {"llama": r"\.q_proj\.weight$", "gpt2": r"\.attn\.c_attn\.weight$"}


def as_rules(rules: Any) -> list[Rule]:
    """``rules`` as a list of :class:`Rule`: a named set, or ``(pattern, spec)`` pairs."""
    if rules is None:
        return []
    if isinstance(rules, str):
        if rules not in RULE_SETS:
            raise ShardingError(
                f"sharding rules {rules!r}: no such rule set; the ready ones are "
                f"{sorted(RULE_SETS)}, or give [(pattern, spec), ...]"
            )
        return list(RULE_SETS[rules])
    out = []
    for rule in rules:
        if isinstance(rule, Rule):
            out.append(rule)
        elif isinstance(rule, Sequence) and len(rule) == 2 and isinstance(rule[0], str):
            out.append(Rule(rule[0], tuple(rule[1])))
        else:
            raise ShardingError(
                f"sharding rule {rule!r}: give (pattern, spec), e.g. "
                "(r'mlp\\.up\\.weight$', ('model', None))"
            )
    return out


def detect_family(names: Iterable[str]) -> str | None:
    """The rule set whose layer names appear in ``names`` (for ``rules="auto"``)."""
    names = list(names)
    for family, mark in _FAMILY_MARKS.items():
        if any(re.search(mark, n) for n in names):
            return family
    return None


def first_match(rules: Sequence[Rule], name: str) -> Rule | None:
    for rule in rules:
        if rule.matches(name):
            return rule
    return None


def check_used(rules: Sequence[Rule], names: Sequence[str]) -> None:
    """Every required rule matches some parameter, or a clear error."""
    for rule in rules:
        if rule.required and not any(rule.matches(n) for n in names):
            sample = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ShardingError(
                f"sharding rule {rule.pattern!r} -> {rule.spec} matches no parameter of the "
                f"model ({len(names)} parameters: {sample}). Fix the pattern (it is searched "
                "in names like the ones above), or drop the rule."
            )
