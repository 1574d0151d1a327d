"""Each validity check against hand-made rows with a known answer."""

from __future__ import annotations

from robustad_bench.harness.validity import validity_flags, validity_points


def row(attack, eps, auroc, *, steps=10, label=None, norm="linf", task="detection", detector="d"):
    return {
        "cell_id": f"{detector}.{label or attack}.{eps}.{steps}", "status": "ok", "detector": detector,
        "dataset": "t", "category": "c", "seed": 0, "task": task, "attack": attack,
        "attack_label": label or attack, "norm": norm, "eps": eps, "steps": steps,
        "metrics": {"image_auroc": auroc, "pixel_auroc": auroc},
    }


def flags_of(rows):
    flags = validity_flags(rows)
    return {r["cell_id"]: sorted(flags.get(r["cell_id"], ())) for r in rows}


def test_a_larger_eps_must_not_be_weaker():
    rows = [row("pgd", 2 / 255, 0.4), row("pgd", 8 / 255, 0.6), row("pgd", 16 / 255, 0.1)]
    assert flags_of(rows) == {rows[0]["cell_id"]: [], rows[1]["cell_id"]: ["non-monotone-eps"], rows[2]["cell_id"]: []}


def test_more_steps_must_not_be_weaker():
    few, many = row("pgd", 8 / 255, 0.2, steps=10), row("pgd", 8 / 255, 0.5, steps=50)
    assert flags_of([few, many])[many["cell_id"]] == ["more-steps-weaker"]
    assert flags_of([few, row("pgd", 8 / 255, 0.21, steps=50)])[few["cell_id"]] == []  # within tolerance


def test_black_box_stronger_than_white_box_flags_the_white_box():
    pgd, square = row("pgd", 8 / 255, 0.6), row("square", 8 / 255, 0.3, steps=1000)
    assert flags_of([pgd, square]) == {pgd["cell_id"]: ["blackbox-stronger"], square["cell_id"]: []}


def test_unbounded_pgd_must_break_detection():
    pgd, unbounded = row("pgd", 8 / 255, 0.3), row("pgd", 1.0, 0.4, label="validity-pgd-unbounded")
    assert all(f == ["unbounded-not-broken"] for f in flags_of([pgd, unbounded]).values())
    assert flags_of([pgd, row("pgd", 1.0, 0.0, label="validity-pgd-unbounded")]) == {
        pgd["cell_id"]: [], "d.validity-pgd-unbounded.1.0.10": []}


def test_noise_as_harmful_as_the_attack():
    fgsm, noise = row("fgsm", 8 / 255, 0.7, steps=1), row("noise", 8 / 255, 0.71, steps=0)
    assert flags_of([fgsm, noise])[fgsm["cell_id"]] == ["noise-as-strong"]
    assert flags_of([row("fgsm", 8 / 255, 0.2, steps=1), noise])["d.fgsm.0.03137254901960784.1"] == []


def test_groups_do_not_mix_detectors():
    a, b = row("pgd", 8 / 255, 0.6, detector="a"), row("square", 8 / 255, 0.1, detector="b")
    assert validity_flags([a, b]) == {}


def test_validity_points_add_unbounded_noise_and_more_steps():
    points = [("pgd", "pgd", {"eps": 2 / 255, "norm": "linf", "steps": 10, "step_size": None}),
              ("pgd", "pgd", {"eps": 8 / 255, "norm": "linf", "steps": 10, "step_size": None}),
              ("apgd", "apgd", {"eps": 4 / 255, "norm": "linf", "steps": 20}),
              ("pgd", "pgd-fixed-step", {"eps": 8 / 255, "norm": "linf", "steps": 10, "step_size": 0.001}),
              ("square", "square", {"eps": 8 / 255, "norm": "linf", "steps": 300})]
    extra = validity_points(points)
    # unbounded PGD gets the suite's largest gradient steps (apgd's 20)
    assert ("pgd", "validity-pgd-unbounded", {"eps": 1.0, "norm": "linf", "steps": 20, "objective": "detection"}) in extra
    assert [kw["eps"] for name, _, kw in extra if name == "noise"] == [2 / 255, 4 / 255, 8 / 255]
    assert ("pgd", "pgd", {"eps": 8 / 255, "norm": "linf", "steps": 50, "step_size": None}) in extra  # α re-derived
    assert ("pgd", "pgd-fixed-step", {"eps": 8 / 255, "norm": "linf", "steps": 50, "step_size": 0.001}) in extra  # α kept
    assert ("apgd", "apgd", {"eps": 4 / 255, "norm": "linf", "steps": 100}) in extra
    assert not [kw for name, _, kw in extra if name == "square"]  # score-only queries are left alone


def test_noise_is_compared_with_localization_rows_on_pixel_auroc():
    al = row("fgsm", 8 / 255, 0.7, steps=1, task="localization", label="fgsm-al")
    al["metrics"] = {"pixel_auroc": 0.7}
    noise = row("noise", 8 / 255, 0.9, steps=0)  # noise rows are written with task detection
    noise["metrics"] = {"image_auroc": 0.9, "pixel_auroc": 0.71}
    assert flags_of([al, noise])[al["cell_id"]] == ["noise-as-strong"]
    noise["metrics"]["pixel_auroc"] = 0.95  # noise much weaker on the map: no flag
    assert flags_of([al, noise])[al["cell_id"]] == []


def test_more_steps_compares_only_entries_that_differ_in_steps_alone():
    def pgd(steps, auroc, entropy_weight):
        r = row("pgd", 8 / 255, auroc, steps=steps)
        r["cell_id"] += f".{entropy_weight}"
        r["attack_params"] = {"name": "pgd", "eps": 8 / 255, "steps": steps, "step_size": None, "entropy_weight": entropy_weight}
        return r

    plain, adaptive = pgd(10, 0.1, 0.0), pgd(50, 0.5, 10.0)  # an entropy-adaptive PGD-50 is another attack
    assert flags_of([plain, adaptive])[adaptive["cell_id"]] == []
    more = pgd(50, 0.5, 0.0)
    assert flags_of([plain, more])[more["cell_id"]] == ["more-steps-weaker"]


def certificate_row(eps, certified, alpha=0.01):
    return {"cell_id": f"d.certify.{eps}", "status": "ok", "detector": "d", "dataset": "t", "category": "c", "seed": 0,
            "task": "detection", "attack": "certify", "attack_label": "certify", "attack_kind": "certificate", "norm": "l2",
            "eps": eps, "steps": 0, "certificate": {"alpha": alpha},
            "metrics": {"certified_image_auroc": certified, "certified_pixel_auroc": None}}


def test_an_attack_below_the_certificate_at_its_radius_flags_both():
    cert, pgd = certificate_row(0.5, 0.8), row("pgd", 0.5, 0.6, norm="l2")
    assert flags_of([cert, pgd]) == {cert["cell_id"]: ["certificate-violated"], pgd["cell_id"]: ["certificate-violated"]}
    fine = row("pgd", 0.5, 0.79, norm="l2")  # within tolerance of the bound
    other_radius, linf = row("pgd", 0.25, 0.1, norm="l2"), row("pgd", 0.5, 0.1, norm="linf")
    flags = flags_of([cert, fine, other_radius, linf])  # another radius or norm is no comparison
    assert flags[cert["cell_id"]] == [] and not any("certificate-violated" in f for f in flags.values())


def test_images_crossing_their_bounds_beyond_the_confidence_flag_the_certificate():
    """The AUROCs agree, yet under the attack two of 40 images left their certified interval:
    at α = 0.001, Bin(40, α) allows one at 99.9%; one crossing is within the confidence."""
    import numpy as np

    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    lower, upper = np.where(labels == 1, 1.0, -np.inf), np.where(labels == 1, np.inf, 0.0)
    saved = {"d.certify.0.5": {"labels": labels, "lower": lower, "upper": upper}}
    cert, pgd = certificate_row(0.5, 1.0, alpha=0.001), row("pgd", 0.5, 1.0, norm="l2")
    for crossed, flagged in ((2, True), (1, False)):
        scores = np.where(labels == 1, 2.0, -1.0)
        scores[20 : 20 + crossed] = 0.5  # anomalous images pushed below their lower bound, still above every normal one
        saved[pgd["cell_id"]] = {"labels": labels, "scores": scores}
        flags = validity_flags([cert, pgd], arrays=lambda r: saved.get(r["cell_id"]))
        assert ("certificate-violated" in flags.get(cert["cell_id"], set())) == flagged
