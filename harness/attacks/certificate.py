"""``certify``: the certificate cell of a smoothed detector (kind ``certificate``).

Not an attack: no image is perturbed. The harness draws the smoothed detector's ``n`` noisy
base scores and maps per test image (once per fitted detector: every radius's cell reads the
same draws) and turns them into certified bounds at the L2 radius ``eps``
(``harness/certify.py``), each held with probability ≥ 1 − ``alpha`` per image. Its row
carries the certified image (and pixel) AUROC at that radius; it never enters a robust
worst case (a bound is not an image an attacker made). It runs on detectors that declare
``certifiable`` (the ``smoothed`` entry); the grid skips the others, saying so.
"""

from __future__ import annotations

from torch import Tensor

from robustad_bench.core.errors import UserError

from .base import Context, register_attack
from .objective import Objective
from .threat import REQUIRED, ThreatModel


def check_certificate(norm: str = "l2", eps: float = 0.0, alpha: float = 0.001, **_) -> list[tuple[str, str]]:
    found = []
    if str(norm) != "l2":
        found.append(("norm", f"a certificate of Gaussian smoothing is an L2 radius: norm l2, got {norm!r}"))
    if not 0 < alpha < 1:
        found.append(("alpha", f"1 − confidence, in (0, 1) (e.g. 0.001), got {alpha!r}"))
    return found


@register_attack("certify", kind="certificate", tasks=("detection",), check=check_certificate,
                 title="certified (smoothing)", note="a certified bound of the smoothed detector, not an attack",
                 threat={"norm": "l2", "eps": REQUIRED}, tiny={"eps": 0.25, "alpha": 0.01})
def certify(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, alpha: float = 0.001) -> Tensor:
    """Certified bounds of a smoothed detector at each L2 radius (computed by the harness)."""
    raise UserError("certify computes certified bounds of a smoothed detector in a suite's cell; it perturbs no image",
                    key="attacks")
