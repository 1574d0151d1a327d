"""anomalib's models through our contract: clean scores equal anomalib's own inference, and
PGD through the adapter lowers image AUROC on the embedded textures. (Shapes, gradients,
batch independence, eval mode and the state_dict round trip are the admission check's, run
over the whole registry by ``test_admission.py``.)"""

from __future__ import annotations

import pytest
import torch

from robustad_bench.adapters import DETECTORS, create_detector, list_detectors
from robustad_bench.core.errors import UserError
from robustad_bench.harness.attacks import run_attack
from robustad_bench.harness.datasets import DATASETS
from robustad_bench.harness.metrics import auroc
from robustad_bench.harness.tasks import seeded

pytest.importorskip("anomalib")  # the extra (``robustad-bench[anomalib]``, in ``dev``)
ANOMALIB = list_detectors("anomalib_*")


@pytest.fixture(scope="module")
def textures(data_dir):
    dataset = DATASETS.get("textures")(image_size=64, crop_size=96, n_train=8, n_test_normal=6, n_test_anomalous=6)
    return dataset.load("brick", seed=0, data_dir=data_dir)


@pytest.fixture(scope="module", params=ANOMALIB)
def fitted(request, textures):
    with seeded(0):
        detector = create_detector(request.param, **DETECTORS.get(request.param).tiny)
    split = textures.resized(detector.input_size)
    detector.fit(split.train, seed=0)
    return detector.eval(), split


def test_the_anomalib_models_are_registered():
    assert {"anomalib_padim", "anomalib_patchcore", "anomalib_dfm"} <= set(ANOMALIB)


def test_clean_scores_and_maps_equal_anomalibs_own_inference(fitted):
    detector, split = fitted
    ours = detector(split.test)
    with torch.no_grad():
        theirs = detector.anomalib_output(split.test)  # anomalib's forward, with its no_grad
    assert torch.equal(ours.score, theirs.pred_score.flatten())
    if theirs.anomaly_map is None:  # an image-level model: the map is the score, broadcast (pixel metrics n/a)
        assert not detector.localization and torch.equal(ours.map, ours.score[:, None, None].expand_as(ours.map))
    else:
        assert torch.equal(ours.map, theirs.anomaly_map[:, 0])


def test_pgd_through_the_adapter_lowers_image_auroc(fitted):
    """PGD on a white-box model; Square (queries only) on one admitted score-only."""
    detector, split = fitted
    labels = torch.as_tensor(split.labels)
    clean = auroc(split.labels, detector(split.test).score.detach().numpy())
    attack, budget = ("pgd", {"steps": 10}) if detector.differentiable else ("square", {"steps": 200})
    adversarial = run_attack(attack, detector, split.test, labels, None, eps=8 / 255, **budget)
    attacked = auroc(split.labels, detector(adversarial).score.detach().numpy())
    assert clean > 0.6 and attacked < clean - 0.3, (attack, clean, attacked)


def test_a_score_only_model_has_no_input_gradient_and_declares_it(fitted):
    """``differentiable = False`` only where anomalib's scoring really cuts the gradient (else
    it would forgo the gradient attacks for nothing); every other model has one."""
    detector, split = fitted
    x = split.test[:2].clone().requires_grad_(True)
    assert detector(x).score.requires_grad == detector.differentiable


def test_configuration_problems_name_the_key(monkeypatch):
    with pytest.raises(UserError, match="weights must be 'random'"):
        create_detector("anomalib_padim", weights="imagenet")
    with pytest.raises(UserError, match="coreset_sampling_ratio"):
        create_detector("anomalib_patchcore", backbone="resnet18", coreset_sampling_ratio=0)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "anomalib" else real(name, *a))
    assert any("robustad-bench[anomalib]" in p for p in DETECTORS.get("anomalib_dfm").check_config())


def test_our_patchcore_with_anomalibs_choices_gives_anomalibs_scores_and_maps(textures):
    """Same backbone weights (same seed), no subsampling: with ``score: reweighted`` and
    ``upsampling: nearest`` our PatchCore equals anomalib's; its defaults differ only there."""
    def fitted(name, **kwargs):
        with seeded(0):
            detector = create_detector(name, backbone="resnet18", input_size=64, **kwargs).eval()
        detector.fit(textures.train, seed=0)
        return detector

    theirs = fitted("anomalib_patchcore", coreset_sampling_ratio=1.0)(textures.test)
    ours = fitted("patchcore", coreset_ratio=1.0, score="reweighted", upsampling="nearest")(textures.test)
    assert torch.allclose(ours.score, theirs.score, atol=1e-5) and torch.allclose(ours.map, theirs.map, atol=1e-5)
    default = fitted("patchcore", coreset_ratio=1.0)(textures.test)
    assert not torch.allclose(default.score, theirs.score, atol=1e-3)  # the max of the smoothed map is another score


def test_an_images_score_and_gradient_do_not_depend_on_its_batch(fitted):
    """Exactly, not within a tolerance: anomalib's batched distance matmuls and einsums round
    differently with the batch size, so the adapter scores one image at a time."""
    detector, split = fitted
    x = split.test[:5].clone().requires_grad_(True)
    together = detector(x).score
    (grad_together,) = torch.autograd.grad(together.sum(), x) if detector.differentiable else (None,)
    for i in (0, 3):
        alone_x = split.test[i : i + 1].clone().requires_grad_(True)
        alone = detector(alone_x).score
        assert torch.equal(alone[0], together[i])
        if detector.differentiable:
            (grad_alone,) = torch.autograd.grad(alone.sum(), alone_x)
            assert torch.equal(grad_alone[0], grad_together[i])
