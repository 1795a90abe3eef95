"""``fastconv.explain``: what ``algorithm="auto"`` would run for a call, without running it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import functional, plans, tune

#: The public ops explain() takes, by name.
OPS: tuple[str, ...] = tuple(functional.__all__)


def explain(op: str | Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """What ``op(*args, **kwargs)`` would run, without running it.

    ``op`` is a public op or its name (``"conv2d"``, ``fastconv.max_pool2d``,
    ...), followed by the arguments you would call it with. The call's
    arguments are checked exactly as the call would check them (a bad argument
    raises the same error), the algorithm is chosen, and nothing is computed.
    With autotuning on, a choice not yet measured is reported from the shape
    rules (explain never times; the first real call would).

    Returns a dict:

    - ``"op"``: the op's name; ``"device"``: ``"cpu"`` or ``"cuda"``;
    - ``"algorithm"``, ``"source"``, ``"reason"``: the main kernel's algorithm name;
      where the choice came from: ``"heuristic"`` (the shape rules),
      ``"measured"`` (timed in this process), ``"cache"`` (the tuning file of
      :mod:`fastconv.tune`) or ``"requested"`` (named with ``algorithm=``); and one
      sentence saying why;
    - ``"kernels"``: the same three for each kernel the call runs, in order, with
      its kernel op (``conv2d_backward`` runs up to three: grad_input, grad_weight,
      grad_bias).

    >>> import numpy as np, fastconv
    >>> x, w = np.ones((8, 64, 28, 28), np.float32), np.ones((64, 64, 3, 3), np.float32)
    >>> choice = fastconv.explain("conv2d", x, w, padding=1)
    >>> choice["algorithm"], choice["source"]
    ('winograd', 'heuristic')
    >>> fastconv.explain(fastconv.max_pool2d, x, 2)["algorithm"]
    'direct'
    """
    name = getattr(op, "__name__", op)
    if not isinstance(name, str) or name not in OPS or (
            callable(op) and op is not getattr(functional, name)):
        raise ValueError(f"op must be one of fastconv's ops or its name ({', '.join(OPS)}), "
                         f"got {op!r}")
    function = getattr(functional, name)
    with plans.explaining(), tune.no_measuring():
        try:
            function(*args, **kwargs)
        except plans.Explained as explained:
            plan: Any = explained.plan  # made by functional._planned.described: .choices
        else:  # pragma: no cover - every op goes through plans.put
            raise RuntimeError(f"{name} ran without building a plan")
    kernels = [{"op": kernel_op, "algorithm": choice.algorithm, "source": choice.source,
                "reason": choice.reason} for kernel_op, choice in plan.choices]
    main = kernels[0] if kernels else {"algorithm": None, "source": None,
                                       "reason": "no kernel runs for these arguments"}
    device = plan.choices[0][1].device if plan.choices else None
    return {"op": name, "device": device, "algorithm": main["algorithm"],
            "source": main["source"], "reason": main["reason"], "kernels": kernels}
