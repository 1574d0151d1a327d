"""The fit group's ``Recall``: what a composite attack may take from an earlier cell, and when
the images are let go."""

from __future__ import annotations

from collections import Counter

import torch

from robustad_bench.harness.attacks import ATTACKS
from robustad_bench.harness.attacks.recall import (
    Recall,
    call_key,
    cell_call,
    part_calls,
    run_order,
    taken_parts,
)


def point(name: str, **given):
    return ATTACKS.get(name).resolve(given)


def test_keys_tell_apart_what_changes_an_image_and_ignore_what_does_not():
    apgd, square = ATTACKS.get("apgd"), ATTACKS.get("square")
    base = cell_call(apgd, point("apgd", eps=8 / 255, steps=100))
    assert base == cell_call(apgd, point("apgd", eps=8 / 255, steps=100, restarts=1))  # a default given or not
    for other in (point("apgd", eps=4 / 255, steps=100), point("apgd", eps=8 / 255, steps=50),
                  point("apgd", eps=8 / 255, steps=100, objective="localization"), point("apgd", eps=8 / 255, steps=100, bpda=True)):
        assert cell_call(apgd, other) != base
    # a score-only attack takes no gradient: BPDA does not change its call
    plain = call_key(square, square.threat_model(point("square", eps=0.1)), {}, {"task": "detection", "entropy_weight": 0.0, "bpda": False})
    assert plain == call_key(square, square.threat_model(point("square", eps=0.1)), {}, {"task": "detection", "entropy_weight": 0.0, "bpda": True})
    # what reads more than the group shares has no key: a prepared state, a transfer source
    unshared = [name for name in ATTACKS.names() if ATTACKS.get(name).prepare is not None or ATTACKS.get(name).kind == "transfer"]
    assert unshared and all(cell_call(ATTACKS.get(name), {"eps": 0.1}) is None for name in unshared)


def test_autoattack_takes_only_parts_an_earlier_cell_makes():
    aa = ATTACKS.get("autoattack")
    aa_point = point("autoattack", eps=8 / 255, steps=100, queries=5000)
    calls = [(aa, aa_point), (ATTACKS.get("apgd"), point("apgd", eps=8 / 255, steps=100)),
             (ATTACKS.get("square"), point("square", eps=8 / 255, steps=5000)), (aa, aa_point)]
    taken = taken_parts(calls)
    assert taken[0] == [] and taken[1] == taken[2] == []  # in this order the first AutoAttack precedes its parts
    assert set(taken[3]) == {cell_call(*calls[1]), cell_call(*calls[2])} and set(taken[3]) < set(part_calls(aa, aa_point))
    assert run_order(calls) == [1, 2, 0, 3]  # so the runner runs both after them
    assert run_order(calls[:1] + calls[3:]) == [0, 1]  # nothing to take: the suite's order


def held_parts(calls: list, order: list[int]) -> int:
    """The most parts' images a fit group's ``Recall`` holds at once when its cells run in
    ``order`` (each from the cell that makes it to its last taker)."""
    ordered = [calls[i] for i in order]
    last_taker = {key: position for position, keys in enumerate(taken_parts(ordered)) for key in keys}
    held, most = set(), 0
    for position, call in enumerate(ordered):
        key = cell_call(*call)
        if last_taker.get(key, -1) > position:
            held.add(key)
        most = max(most, len(held))
        held = {key for key in held if last_taker[key] > position}
    return most


def test_a_composite_runs_right_after_the_last_cell_it_takes_from_so_parts_are_held_briefly():
    apgd, square, aa = ATTACKS.get("apgd"), ATTACKS.get("square"), ATTACKS.get("autoattack")
    calls = []
    for eps in (8 / 255, 4 / 255):  # as a suite lists them: each ε's APGD and Square, the AutoAttacks last
        calls += [(apgd, point("apgd", eps=eps, steps=100)), (square, point("square", eps=eps, steps=5000))]
    calls += [(aa, point("autoattack", eps=eps, steps=100, queries=5000)) for eps in (8 / 255, 4 / 255)]
    order = run_order(calls)
    assert order == [0, 1, 4, 2, 3, 5]  # each AutoAttack right after its ε's Square
    assert held_parts(calls, order) == 2  # one ε's two parts at a time
    assert held_parts(calls, [0, 1, 2, 3, 4, 5]) == 4  # every composite last: every part at once
    assert taken_parts([calls[i] for i in order])[2] == [cell_call(*calls[0]), cell_call(*calls[1])]


def test_recall_keeps_what_is_wanted_and_lets_it_go_when_the_last_taker_is_done():
    recall = Recall(Counter({"a": 2}))
    x = torch.arange(12.0).view(3, 4)
    recall.offer("b", ("i0", "i1", "i2"), x)  # nobody wants it
    recall.offer("a", ("i0", "i1"), x[:2])
    assert "b" not in recall.images
    assert recall.get("a", ("i0", "i2"), torch.device("cpu")) is None  # an image not kept: the part runs
    assert torch.equal(recall.get("a", ("i1", "i0"), torch.device("cpu")), x[[1, 0]])
    recall.done(["a"])
    assert "a" in recall.images
    recall.done(["a"])
    assert "a" not in recall.images
