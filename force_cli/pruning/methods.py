"""The method registry: every pruning criterion by name, with what the loop must know about it.

Adding a criterion is one score function in ``criteria.py`` plus one ``register`` line here.
This module imports no torch, so that ``force prune --help`` (the methods, their default steps
and objectives) and the "unknown method" error answer at once: a built-in method names its score
function, which ``criteria.score_function`` looks up when the method first scores. A method
registered from outside may pass the function itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from force_cli.errors import UnknownNameError
from force_cli.pruning.objectives import Objective, make_objective


@dataclass(frozen=True)
class Method:
    name: str
    score: Union[Callable, str]  # criteria.ScoreFn, or the name of one in criteria.py
    summary: str
    iterative: bool = False
    revives: bool = False  # may a weight pruned at step t come back at step t+1?
    needs_data: bool = True
    needs_input_shape: bool = False  # data-free criteria that feed a synthetic input
    default_steps: int = 1
    # The saliency objective of the method's reference code (None for data-free methods).
    objective: Objective | None = None
    objective_reason: str = ""  # why that objective, for --help and the README

    def steps_for(self, requested: int | None) -> int:
        """The number of pruning steps a run takes: one-shot methods ignore ``requested``."""
        return (requested or self.default_steps) if self.iterative else 1


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownNameError("method", name, METHODS)
    return METHODS[name]


def resolve_objective(spec: Method, loss: str | None = None, temperature: float | None = None) -> Objective | None:
    """The saliency objective of a run: the method's own unless ``loss`` or ``temperature`` is given.

    A temperature alone selects cross-entropy (the only objective it applies to); cross-entropy
    without a temperature takes the method's default one (200 for GraSP, else 1). A criterion
    registered without an objective uses cross-entropy. Data-free methods have no objective:
    None, whatever is asked.
    """
    if not spec.needs_data:
        return None
    own = spec.objective or Objective("cross-entropy")  # a registered criterion that names none
    if loss is None and temperature is None:
        return own
    loss = loss or "cross-entropy"
    if temperature is None and loss == "cross-entropy" and own.name == "cross-entropy":
        temperature = own.temperature
    return make_objective(loss, temperature)


_PAPER = Objective("true-logit")
_PAPER_REASON = "as the FORCE paper's code, which keeps extreme sparsities trainable"
register(Method("force", "connection_sensitivity", "FORCE: iterative |θ0 ⊙ ∇L(θ0 ⊙ c)|, pruned weights may come back",
                iterative=True, revives=True, default_steps=60, objective=_PAPER, objective_reason=_PAPER_REASON))
register(Method("iter-snip", "connection_sensitivity", "Iterative SNIP: |θ ⊙ ∇L(θ ⊙ c)|, pruned weights stay pruned",
                iterative=True, default_steps=60, objective=_PAPER, objective_reason=_PAPER_REASON))
register(Method("grasp-it", "squared_gradient", "GraSP-It: iterative (∇L(θ ⊙ c))², pruned weights stay pruned",
                iterative=True, default_steps=60, objective=_PAPER, objective_reason=_PAPER_REASON))
register(Method("snip", "connection_sensitivity", "SNIP: one-shot |θ ⊙ ∇L(θ)| (SNIP-MB with --batches > 1)",
                objective=_PAPER, objective_reason=_PAPER_REASON))
register(Method("grasp", "grasp", "GraSP: one-shot, keeps the largest θ ⊙ H∇L",
                objective=Objective("cross-entropy", 200.0), objective_reason="as Wang et al.'s GraSP code"))
register(Method("synflow", "synflow", "SynFlow: iterative, data-free |θ ⊙ ∂R/∂θ|",
                iterative=True, needs_data=False, needs_input_shape=True, default_steps=100))
register(Method("magnitude", "magnitude", "magnitude: one-shot |θ|", needs_data=False))
register(Method("random", "uniform_random", "random: one-shot uniform random pruning (per layer under --budget)",
                needs_data=False))
register(Method("ntk-sap", "ntk_sap", "NTK-SAP: iterative, data-free, mask gradient of an NTK-trace estimate over re-drawn weights",
                iterative=True, needs_data=False, needs_input_shape=True, default_steps=20))
_PROSPR = Objective("cross-entropy")
_PROSPR_REASON = "as Alizadeh et al.'s ProsPr code"
register(Method("prospr", "prospr", "ProsPr: one-shot |∂L/∂c| after 3 SGD steps, first-order",
                objective=_PROSPR, objective_reason=_PROSPR_REASON))
register(Method("prospr-full", "prospr_full",
                "ProsPr: one-shot |∂L/∂c| after 3 SGD steps, full meta-gradient (memory: every step's graph)",
                objective=_PROSPR, objective_reason=_PROSPR_REASON))
