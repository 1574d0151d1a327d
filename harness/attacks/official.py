"""Reference implementations through a two-logit wrapper: the official AutoAttack code
(Croce & Hein; ``pyautoattack``, modules ``autopgd_base`` and ``square``) and torchattacks.

``TwoLogits`` turns a detector into the binary classifier those libraries expect: logits
``[-(s − t)/2, (s − t)/2]``, class 1 = anomalous, decision boundary at the clean threshold
t. Its softmax cross-entropy and its margin are monotone functions of ``y·(s − t)``, so the
libraries climb the same objective as ours (detection only). The wrapper is put in eval
mode when it is built: torchattacks' ``Attack.__call__`` restores the wrapper's training
flag afterwards, and a fresh module's flag is ``True`` — that used to switch the detector's
dropout on for every later forward.

The official code seeds and draws from torch's global generator; it runs here inside
``fork_rng`` so the caller's random state is left as it was.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .base import Context
from .objective import Objective
from .threat import ThreatModel

LIBRARY_NORMS = {"linf": "Linf", "l2": "L2"}


class TwoLogits(nn.Module):
    """A detector as a two-class classifier: logits (B, 2), class 1 = anomalous."""

    def __init__(self, detector: nn.Module, threshold: float):
        super().__init__()
        self.detector = detector
        self.threshold = threshold
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        s = self.detector(x).score - self.threshold
        return torch.stack([-s / 2, s / 2], dim=1)


def official_check(impl: str = "ours", **point) -> list[tuple[str, str]]:
    """Why ``impl: official`` cannot run this point (the libraries are two-class classifiers);
    the ``check`` of every attack with an ``impl`` option."""
    if impl != "official":
        return []
    problems = []
    if point.get("objective", "detection") != "detection":
        problems.append(("impl", "impl 'official' runs through the two-logit wrapper: objective must be 'detection'"))
    if point.get("entropy_weight"):
        problems.append(("impl", "impl 'official' climbs the library's own loss: entropy_weight must be 0"))
    return problems


@contextmanager
def global_seed(seed: int, x: Tensor):
    """Seed torch's global generators for library code, then restore them."""
    with torch.random.fork_rng(devices=[x.device.index or 0] if x.is_cuda else []):
        torch.manual_seed(seed)
        yield


def official_apgd(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, eot: int = 1) -> Tensor:
    """The official APGD-CE, best point per image (``perturb(..., best_loss=True)``)."""
    from pyautoattack.autopgd_base import APGDAttack

    model = TwoLogits(objective.detector, context.threshold)
    attack = APGDAttack(model, n_iter=threat.steps, norm=LIBRARY_NORMS[threat.norm], n_restarts=threat.restarts,
                        eps=threat.eps, seed=context.seed, loss="ce", eot_iter=eot, device=x.device)
    with global_seed(context.seed, x):
        return attack.perturb(x.contiguous(), objective.labels.long(), best_loss=True).detach()


def official_square(objective: Objective, x: Tensor, threat: ThreatModel, context: Context, *, p_init: float) -> Tensor:
    """The official Square Attack (margin loss). Its search result per image is returned
    (``attack_single_run``), not ``perturb``'s clean image for the images it did not flip:
    AUROC needs the attacked score of every image."""
    from pyautoattack.square import SquareAttack

    model = TwoLogits(objective.detector, context.threshold)
    # its loop makes n_queries queries after the initial one: ``steps`` queries in all, as ours
    attack = SquareAttack(model, norm=LIBRARY_NORMS[threat.norm], n_queries=threat.steps - 1, eps=threat.eps,
                          p_init=p_init, seed=context.seed, loss="margin", device=x.device)
    attack.init_hyperparam(x)
    with global_seed(context.seed, x), torch.no_grad():
        _, adv = attack.attack_single_run(x.contiguous(), objective.labels.long())
    return adv.detach()
