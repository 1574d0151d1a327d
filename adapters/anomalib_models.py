"""anomalib's image models behind our detector contract (``pip install robustad-bench[anomalib]``).

Each ``anomalib_<model>`` detector builds anomalib's own torch model with the suite's keys
(the torch model's constructor keys, one to one; ``weights: random | timm`` is its
``pre_trained``), fits it as anomalib's Lightning module does, and scores [0, 1] images:
the ImageNet normalisation of anomalib's default pre-processor happens inside (the harness
resizes to ``input_size`` before any attack, so ε is in pixel units of what the model sees),
and the score and map are the raw torch model's. anomalib's post-processor is not used: it
min-max normalises and clamps with statistics of a validation set, which zeroes gradients
outside that range.

anomalib's forward passes cut the input gradient. What was done, per model (the clean scores
equal anomalib's own inference on the same weights and images: ``tests/unit/adapters``):
- ``anomalib_padim``: its forward runs the feature extractor and the embedding under
  ``torch.no_grad``. Ours calls the same parts — the feature extractor with its
  ``requires_grad`` flag set (so it does not enter ``no_grad`` either), ``generate_embedding``,
  the Mahalanobis ``anomaly_map_generator`` — without it. Score: the map's maximum.
- ``anomalib_patchcore``: the same for the feature extractor; the pooling, embedding,
  nearest-neighbour search and the k-NN re-weighted score (anomalib's ``num_neighbors``) are
  anomalib's, unchanged (differentiable: distances are recomputed by torch).
- ``anomalib_dfm``: the same for the feature extractor and the pooling (``get_features``); the
  PCA reconstruction error (``score``, ``score_type: fre``) is anomalib's, unchanged.
- ``anomalib_dfkde``: its feature extraction ends in ``.detach()``; ours pools the one layer as
  anomalib does, without it; the KDE classifier is anomalib's, unchanged. Image-level only.
- ``anomalib_stfpm``, ``anomalib_reverse_distillation``, ``anomalib_fastflow``, ``anomalib_uflow`` (trained):
  fitted by their Lightning module's own ``training_step`` and ``configure_optimizers`` for
  ``epochs`` over the train images (our loop, seeded: no Trainer, so no validation, callbacks
  or early stopping); scored by anomalib's own forward, unchanged — with the extractors'
  ``requires_grad`` flag set it keeps the input gradient. ``weights: random`` also randomly
  initialises what anomalib hard-codes as pretrained (STFPM's teacher).
The anomalib model stays in eval mode outside fitting (its extractor's BatchNorm statistics
fixed, whatever the gradient flag), and its parameters are frozen: gradients reach the input only.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Literal
from unittest.mock import patch

import numpy as np
import torch
from torch import Tensor

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import PositiveInt

from .backbones import check_backbone
from .base import AnomalyOutput, Detector, Normalize
from .registry import register_detector

EXTRA = "pip install 'robustad-bench[anomalib]'"
SUPPORTED = ">=2.7,<2.8"  # the anomalib releases these adapters were written and tested against


def anomalib_module(path: str):
    """An anomalib module, or a UserError saying how to install the extra."""
    try:
        with warnings.catch_warnings():  # anomalib 2.7's own deprecation notices (dinov2, timm.models.layers) on import
            warnings.simplefilter("ignore", FutureWarning)
            return importlib.import_module(path)
    except ImportError as err:
        raise UserError(f"the anomalib detectors need anomalib ({SUPPORTED}): {EXTRA} ({err})", key="detectors") from err


def anomalib_problems(kwargs: dict) -> list[str]:
    """``check_config`` of every anomalib detector: anomalib installed, a timm backbone, weights random or timm."""
    problems = []
    if importlib.util.find_spec("anomalib") is None:
        problems.append(f"needs anomalib ({SUPPORTED}), which is not installed: {EXTRA}")
    if "backbone" in kwargs and (problem := check_backbone(kwargs["backbone"])):
        problems.append(problem)
    if kwargs.get("weights", "random") not in ("random", "timm"):
        problems.append(f"weights must be 'random' (random init) or 'timm' (anomalib's pretrained download), got {kwargs['weights']!r}")
    if kwargs.get("input_size", 256) < 32:
        problems.append(f"input_size must be at least 32, got {kwargs['input_size']}")
    return problems


@contextmanager
def seeded_globals(seed: int):
    """Seed torch's and numpy's global generators (which anomalib's fitting draws from), then
    restore both: a fit depends on its seed only, and leaves no trace on other code's draws."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


@contextmanager
def quiet_progress():
    """No progress bar from anomalib's coreset loop (one per fit would interleave with the run's own)."""
    with patch("anomalib.models.components.sampling.k_center_greedy.tqdm", lambda iterable, **_: iterable):
        yield


def fraction_problems(kwargs: dict, key: str, default: float, what: str) -> list[str]:
    value = kwargs.get(key, default)
    return [] if 0 < value <= 1 else [f"{key} ({what}) must be in (0, 1], got {value}"]


class AnomalibDetector(Detector):
    """What every anomalib adapter shares: the wrapped torch model ``self.model``, normalisation
    inside, fitting by collecting the train embeddings, frozen weights, eval mode outside fitting."""

    version = "1"
    fit_batch_size = 32

    def __init__(self, model: torch.nn.Module, *, input_size: int, weights: str):
        super().__init__()
        self.model = model
        self.input_size, self.weights = input_size, "timm:anomalib" if weights == "timm" else "random"
        self.normalize = Normalize()
        self.trainable = [name for name, p in model.named_parameters() if p.requires_grad]  # what anomalib trains
        self.model.requires_grad_(False)  # frozen: gradients flow to the input only
        self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # only fitting puts anomalib's model in training mode
        return self

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        """Cheap checks run by ``validate`` (no model is built)."""
        return anomalib_problems(kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Fitted buffers (memory bank, Gaussian statistics) start empty: take the saved shapes."""
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            owner, _, name = key.removeprefix(prefix).rpartition(".")
            module = self.get_submodule(owner) if owner else self
            if name in module._buffers and module._buffers[name] is not None and module._buffers[name].shape != value.shape:
                module._buffers[name] = torch.empty_like(value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        """anomalib's training loop for a model without an optimiser: one pass over the train
        images in training mode collects their embeddings, then the model fits on them."""
        device = next(self.model.buffers(), normal_images).device
        with seeded_globals(seed):  # anomalib draws from torch's and numpy's global generators (coreset, projection)
            self.model.train()
            for extractor in self.extractors():
                extractor.eval()  # frozen extractor: BatchNorm keeps its statistics (anomalib's behaviour)
            for start in range(0, normal_images.shape[0], self.fit_batch_size):
                self.model(self.prepare(normal_images[start : start + self.fit_batch_size].to(device)))
            self.finish_fit()
            self.model.eval()

    def prepare(self, x: Tensor) -> Tensor:
        """Images in [0, 1] as anomalib's models take them: contiguous (a view of another
        layout changes convolution rounding, and DFM's ``view`` needs it), ImageNet-normalised."""
        return self.normalize(x.contiguous())

    def extractors(self) -> list[torch.nn.Module]:
        """anomalib's feature extractors inside the model (their ``requires_grad`` flag bypasses ``no_grad``)."""
        return [m for m in self.model.modules() if type(m).__name__ == "TimmFeatureExtractor"]

    def pass_gradients(self) -> None:
        """Set each feature extractor's ``requires_grad`` flag: it then runs without ``no_grad``
        (its mode stays ours: eval)."""
        for extractor in self.extractors():
            extractor.requires_grad = True

    def finish_fit(self) -> None:
        raise NotImplementedError

    def forward(self, x: Tensor) -> AnomalyOutput:
        """One image at a time: anomalib's batched operations (distance matmuls, einsums) round
        differently with the batch size, and an image's score must not depend on its batch."""
        outputs = [self.score_images(image) for image in x.split(1)]
        return AnomalyOutput(torch.cat([o.score for o in outputs]), torch.cat([o.map for o in outputs]))

    def features(self, x: Tensor) -> Tensor:
        return torch.cat([self.image_features(image) for image in x.split(1)])

    def score_images(self, x: Tensor) -> AnomalyOutput:
        raise NotImplementedError

    def image_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def anomalib_output(self, x: Tensor) -> SimpleNamespace:
        """anomalib's own inference on each image ``x`` in [0, 1] (``pred_score``, ``anomaly_map``
        or None), its feature extractors' flags as anomalib sets them: what our forward must
        equal on clean images."""
        flags = [(e, e.requires_grad) for e in self.extractors()]
        for extractor, _ in flags:
            extractor.requires_grad = False
        try:
            outputs = [self.model(self.prepare(image)) for image in x.split(1)]
        finally:
            for extractor, flag in flags:
                extractor.requires_grad = flag
        maps = [o.anomaly_map for o in outputs]
        return SimpleNamespace(pred_score=torch.cat([o.pred_score.reshape(1) for o in outputs]),
                               anomaly_map=None if maps[0] is None else torch.cat(maps))


@register_detector("anomalib_padim")
class AnomalibPadim(AnomalibDetector):
    """PaDiM (Defard et al., ICPR 2021) as anomalib implements it: a Gaussian per patch position
    over concatenated multi-layer features (a random subset of ``n_features`` channels); the
    map is the Mahalanobis distance, upsampled and blurred; the score its maximum."""

    name = "anomalib_padim"
    tiny = {"backbone": "resnet18", "input_size": 64, "n_features": 32}

    def __init__(self, backbone: str = "resnet18", layers: list[str] | None = None, weights: str = "random",
                 n_features: PositiveInt | None = None, input_size: PositiveInt = 256):
        for problem in self.check_config(backbone=backbone, weights=weights, input_size=input_size):
            raise UserError(problem)
        padim = anomalib_module("anomalib.models.image.padim.torch_model")
        model = padim.PadimModel(backbone=backbone, layers=list(layers or ["layer1", "layer2", "layer3"]),
                                 pre_trained=weights == "timm", n_features=n_features)
        super().__init__(model, input_size=input_size, weights=weights)
        self.pass_gradients()

    def finish_fit(self) -> None:
        self.model.fit()

    def image_features(self, x: Tensor) -> Tensor:
        """The embedding PaDiM models: (B, n_features, h, w)."""
        return self.model.generate_embedding(self.model.feature_extractor(self.prepare(x)))

    def score_images(self, x: Tensor) -> AnomalyOutput:
        embedding = self.image_features(x)
        gaussian = self.model.gaussian
        maps = self.model.anomaly_map_generator(embedding=embedding, mean=gaussian.mean,
                                                inv_covariance=gaussian.inv_covariance, image_size=x.shape[-2:])[:, 0]
        return AnomalyOutput(score=maps.flatten(1).amax(dim=1), map=maps)


@register_detector("anomalib_patchcore")
class AnomalibPatchcore(AnomalibDetector):
    """PatchCore (Roth et al., CVPR 2022) as anomalib implements it: 3×3-pooled layer2 + layer3
    patch features, a k-center-greedy coreset (``coreset_sampling_ratio``) as memory bank,
    nearest-neighbour patch distances as the map (upsampled, blurred), and the largest one
    re-weighted by its ``num_neighbors`` support samples as the score."""

    name = "anomalib_patchcore"
    tiny = {"backbone": "resnet18", "input_size": 64}

    def __init__(self, backbone: str = "wide_resnet50_2", layers: list[str] | None = None, weights: str = "random",
                 num_neighbors: PositiveInt = 9, coreset_sampling_ratio: float = 0.1, input_size: PositiveInt = 256):
        for problem in self.check_config(backbone=backbone, weights=weights, input_size=input_size,
                                         coreset_sampling_ratio=coreset_sampling_ratio):
            raise UserError(problem)
        patchcore = anomalib_module("anomalib.models.image.patchcore.torch_model")
        model = patchcore.PatchcoreModel(layers=list(layers or ["layer2", "layer3"]), backbone=backbone,
                                         pre_trained=weights == "timm", num_neighbors=num_neighbors)
        super().__init__(model, input_size=input_size, weights=weights)
        self.coreset_sampling_ratio = coreset_sampling_ratio
        self.pass_gradients()

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        return anomalib_problems(kwargs) + fraction_problems(kwargs, "coreset_sampling_ratio", 0.1, "the share of patches kept")

    def finish_fit(self) -> None:
        with warnings.catch_warnings(), quiet_progress():
            warnings.simplefilter("ignore", DeprecationWarning)  # anomalib 2.7 warns of ``embeddings`` even when not given
            self.model.subsample_embedding(sampling_ratio=self.coreset_sampling_ratio)

    def image_features(self, x: Tensor) -> Tensor:
        """The pooled, concatenated patch features: (B, C, h, w)."""
        model = self.model
        features = model.feature_extractor(self.prepare(x))
        return model.generate_embedding({layer: model.feature_pooler(f) for layer, f in features.items()})

    def score_images(self, x: Tensor) -> AnomalyOutput:
        model = self.model
        embedding = self.image_features(x)
        b, _, h, w = embedding.shape
        embedding = model.reshape_embedding(embedding)
        patch_scores, locations = model.nearest_neighbors(embedding=embedding, n_neighbors=1)
        score = model.compute_anomaly_score(patch_scores.reshape(b, -1), locations.reshape(b, -1), embedding)
        maps = model.anomaly_map_generator(patch_scores.reshape(b, 1, h, w), x.shape[-2:])[:, 0]
        return AnomalyOutput(score=score, map=maps)


@register_detector("anomalib_dfm")
class AnomalibDfm(AnomalibDetector):
    """DFM (Ahuja et al., 2019) as anomalib implements it: average-pooled features of one
    layer, a PCA keeping ``n_comps`` of the variance fitted on the train images, and the
    feature reconstruction error (``score_type: fre``) as score, its per-position sum as the map."""

    name = "anomalib_dfm"
    tiny = {"backbone": "resnet18", "input_size": 64, "pooling_kernel_size": 2}

    def __init__(self, backbone: str = "resnet50", layer: str = "layer3", weights: str = "random",
                 pooling_kernel_size: PositiveInt = 4, n_comps: float = 0.97, input_size: PositiveInt = 256):
        for problem in self.check_config(backbone=backbone, weights=weights, input_size=input_size, n_comps=n_comps):
            raise UserError(problem)
        dfm = anomalib_module("anomalib.models.image.dfm.torch_model")
        model = dfm.DFMModel(backbone=backbone, layer=layer, pre_trained=weights == "timm",
                             pooling_kernel_size=pooling_kernel_size, n_comps=n_comps, score_type="fre")
        super().__init__(model, input_size=input_size, weights=weights)
        self.pass_gradients()

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        return anomalib_problems(kwargs) + fraction_problems(kwargs, "n_comps", 0.97, "the share of variance the PCA keeps")

    def finish_fit(self) -> None:
        self.model.fit()

    def image_features(self, x: Tensor) -> Tensor:
        """The pooled layer features DFM models: (B, C, h, w)."""
        model = self.model
        features = model.feature_extractor(self.prepare(x))[model.layer]
        return torch.nn.functional.avg_pool2d(features, model.pooling_kernel_size) if model.pooling_kernel_size > 1 else features

    def score_images(self, x: Tensor) -> AnomalyOutput:
        features = self.image_features(x)
        score, maps = self.model.score(features.reshape(features.shape[0], -1), features.shape)
        maps = torch.nn.functional.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return AnomalyOutput(score=score, map=maps)


@contextmanager
def without_downloads(weights: str):
    """``weights: random``: every timm model anomalib builds is randomly initialised, also where
    anomalib hard-codes ``pretrained=True`` (STFPM's teacher, ...) — the documented switch for
    runs without the model hub (tests, the embedded suites). ``timm``: anomalib's own downloads."""
    if weights != "random":
        yield
        return
    import timm

    create = timm.create_model

    def random_init(*args, **kwargs):
        return create(*args, **{**kwargs, "pretrained": False})

    with patch.object(timm, "create_model", random_init):
        yield


def lightning_module(name: str, input_size: int, weights: str, **kwargs):
    """anomalib's Lightning module ``name`` with the suite's keys, a pre-processor that only
    states the input size (the harness resizes; normalisation is ours), and no post-processor,
    evaluator or visualiser."""
    models = anomalib_module("anomalib.models")
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms import v2

    from .base import IMAGENET_MEAN, IMAGENET_STD

    pre = PreProcessor(transform=v2.Compose([v2.Resize((input_size, input_size)), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]))
    with without_downloads(weights):
        return getattr(models, name)(**kwargs, pre_processor=pre, post_processor=False, evaluator=False, visualizer=False)


class AnomalibTrained(AnomalibDetector):
    """A trained anomalib model: its Lightning module's own ``training_step`` and
    ``configure_optimizers`` run for ``epochs`` over the train images (batches of
    ``fit_batch_size``, seeded), then anomalib's own forward scores — with the feature
    extractors' ``requires_grad`` flag set, it has an input gradient, and nothing else changes."""

    lightning_name = ""
    epochs_key: str | None = None  # the Lightning module's own argument that takes the epoch count (a schedule's length)

    def __init__(self, *, input_size: int, weights: str, epochs: int, fit_batch_size: int, **kwargs):
        for problem in self.check_config(weights=weights, input_size=input_size, **kwargs):
            raise UserError(problem)
        if self.epochs_key:
            kwargs[self.epochs_key] = epochs
        module = lightning_module(self.lightning_name, input_size, weights, **kwargs)
        if not module.automatic_optimization:
            raise UserError(f"{self.name}: anomalib's {self.lightning_name} optimises manually; the adapter does not run it yet")
        super().__init__(module.model, input_size=input_size, weights=weights)
        object.__setattr__(self, "lightning", module)  # its loss and optimiser settings; its model is ``self.model``
        self.epochs, self.fit_batch_size = epochs, fit_batch_size

    def fit(self, normal_images: Tensor, *, seed: int) -> None:
        from anomalib.data import ImageBatch

        device = next(self.model.parameters()).device
        with seeded_globals(seed):
            parameters = dict(self.model.named_parameters())
            for name in self.trainable:  # what anomalib's module leaves trainable, and nothing else
                parameters[name].requires_grad_(True)
            optimizer, schedulers = optimizers(self.lightning.configure_optimizers())
            order = torch.Generator().manual_seed(seed)
            self.lightning.train()
            for _ in range(self.epochs):
                for index in torch.randperm(normal_images.shape[0], generator=order).split(self.fit_batch_size):
                    batch = self.prepare(normal_images[index].to(device))
                    with warnings.catch_warnings():  # its self.log() outside a Trainer warns once per step
                        warnings.simplefilter("ignore")
                        loss = self.lightning.training_step(ImageBatch(image=batch), 0)["loss"]
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                for scheduler in schedulers:
                    scheduler.step()
        self.model.requires_grad_(False)
        self.train(False)
        self.pass_gradients()

    def image_features(self, x: Tensor) -> Tensor:
        """The frozen feature extractor's first feature map: (B, C, h, w)."""
        extractor = (self.extractors() or [self.model.feature_extractor])[0]
        features = extractor(self.prepare(x))
        return next(iter(features.values())) if isinstance(features, dict) else features[0]

    def score_images(self, x: Tensor) -> AnomalyOutput:
        out = self.model(self.prepare(x))
        return AnomalyOutput(score=out.pred_score.reshape(x.shape[0]), map=out.anomaly_map.reshape(x.shape[0], *x.shape[-2:]))


def optimizers(configured) -> tuple[torch.optim.Optimizer, list]:
    """The optimiser and schedulers of a Lightning ``configure_optimizers`` answer."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured, []
    if isinstance(configured, dict):
        scheduler = configured.get("lr_scheduler")
        scheduler = scheduler.get("scheduler") if isinstance(scheduler, dict) else scheduler
        return configured["optimizer"], [scheduler] if scheduler is not None else []
    optimizers_, schedulers = configured if isinstance(configured, tuple) and len(configured) == 2 else (configured, [])
    return list(optimizers_)[0], list(schedulers)


@register_detector("anomalib_stfpm")
class AnomalibStfpm(AnomalibTrained):
    """STFPM (Wang et al., BMVC 2021) as anomalib implements it: a student trained to match a
    frozen teacher's multi-layer features; the map is the layer-wise feature discrepancy,
    the score its maximum. ``weights: random`` also randomly initialises the teacher (anomalib
    downloads ImageNet weights for it)."""

    name = "anomalib_stfpm"
    lightning_name = "Stfpm"
    tiny = {"backbone": "resnet18", "input_size": 64, "epochs": 5}

    def __init__(self, backbone: str = "resnet18", layers: list[str] | None = None, weights: str = "random",
                 epochs: PositiveInt = 100, fit_batch_size: PositiveInt = 32, input_size: PositiveInt = 256):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, layers=list(layers or ["layer1", "layer2", "layer3"]))


@register_detector("anomalib_reverse_distillation")
class AnomalibReverseDistillation(AnomalibTrained):
    """Reverse Distillation (Deng & Li, CVPR 2022) as anomalib implements it: a frozen encoder,
    a trained bottleneck and decoder reconstructing its features; the map is the layer-wise
    cosine discrepancy."""

    name = "anomalib_reverse_distillation"
    lightning_name = "ReverseDistillation"
    tiny = {"backbone": "resnet18", "input_size": 64, "epochs": 10}

    def __init__(self, backbone: str = "wide_resnet50_2", layers: list[str] | None = None, weights: str = "random",
                 epochs: PositiveInt = 200, fit_batch_size: PositiveInt = 32, input_size: PositiveInt = 256):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, layers=list(layers or ["layer1", "layer2", "layer3"]),
                         pre_trained=weights == "timm")


@register_detector("anomalib_fastflow")
class AnomalibFastflow(AnomalibTrained):
    """FastFlow (Yu et al., 2021) as anomalib implements it: 2-D normalising flows trained on
    frozen backbone features; the map is the negative log-likelihood, the score its maximum."""

    name = "anomalib_fastflow"
    lightning_name = "Fastflow"
    tiny = {"backbone": "resnet18", "input_size": 64, "epochs": 4, "flow_steps": 2}

    def __init__(self, backbone: str = "resnet18", weights: str = "random", flow_steps: PositiveInt = 8,
                 conv3x3_only: bool = False, hidden_ratio: float = 1.0, epochs: PositiveInt = 500,
                 fit_batch_size: PositiveInt = 32, input_size: PositiveInt = 256):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, pre_trained=weights == "timm", flow_steps=flow_steps,
                         conv3x3_only=conv3x3_only, hidden_ratio=hidden_ratio)


@register_detector("anomalib_uflow")
class AnomalibUflow(AnomalibTrained):
    """U-Flow (Tailanian et al., 2022) as anomalib implements it: a multi-scale normalising flow
    trained on frozen features (``backbone``: two CaiT models, ``mcait``, or a ResNet); the
    map is the likelihood-based score, the score its maximum."""

    name = "anomalib_uflow"
    lightning_name = "Uflow"
    tiny = {"backbone": "resnet18", "input_size": 64, "epochs": 4, "flow_steps": 2}

    def __init__(self, backbone: Literal["mcait", "resnet18", "wide_resnet50_2"] = "mcait", weights: str = "random",
                 flow_steps: PositiveInt = 4, affine_clamp: float = 2.0, affine_subnet_channels_ratio: float = 1.0,
                 permute_soft: bool = False, epochs: PositiveInt = 200, fit_batch_size: PositiveInt = 32,
                 input_size: PositiveInt = 448):
        super().__init__(input_size=input_size, weights=weights, epochs=epochs, fit_batch_size=fit_batch_size,
                         backbone=backbone, flow_steps=flow_steps, affine_clamp=affine_clamp,
                         affine_subnet_channels_ratio=affine_subnet_channels_ratio, permute_soft=permute_soft)

    @staticmethod
    def check_config(**kwargs) -> list[str]:  # its backbones are anomalib's names, not timm's
        return anomalib_problems({k: v for k, v in kwargs.items() if k != "backbone"})

    @classmethod
    def weights_needed(cls, **kwargs) -> list[str]:
        """``mcait`` is two timm CaiT models (anomalib's names map to them)."""
        needed = super().weights_needed(**kwargs)
        return ["timm:cait_m48_448", "timm:cait_s24_224"] if needed == ["timm:mcait"] else needed


@register_detector("anomalib_dfkde")
class AnomalibDfkde(AnomalibDetector):
    """DFKDE as anomalib implements it: globally pooled features of ``layers``, PCA to
    ``n_pca_components``, a Gaussian KDE of the train images, the score a probability from the
    KDE log-likelihood. Image-level only: the map is the score broadcast (pixel metrics n/a)."""

    name = "anomalib_dfkde"
    localization = False
    tiny = {"backbone": "resnet18", "input_size": 64, "layers": ["layer3"], "n_pca_components": 4}

    def __init__(self, backbone: str = "resnet18", layers: list[str] | None = None, weights: str = "random",
                 n_pca_components: PositiveInt = 16, max_training_points: PositiveInt = 40000,
                 input_size: PositiveInt = 256):
        for problem in self.check_config(backbone=backbone, weights=weights, input_size=input_size, layers=layers):
            raise UserError(problem)
        dfkde = anomalib_module("anomalib.models.image.dfkde.torch_model")
        model = dfkde.DfkdeModel(backbone=backbone, layers=list(layers or ["layer4"]), pre_trained=weights == "timm",
                                 n_pca_components=n_pca_components, max_training_points=max_training_points)
        super().__init__(model, input_size=input_size, weights=weights)
        self.pass_gradients()

    def finish_fit(self) -> None:
        self.model.fit()

    @staticmethod
    def check_config(**kwargs) -> list[str]:
        problems = anomalib_problems(kwargs)
        if len(kwargs.get("layers") or ["layer4"]) != 1:  # anomalib concatenates the layers along the batch axis
            problems.append(f"layers must name exactly one layer (anomalib's DFKDE stacks several along the batch), got {kwargs['layers']}")
        return problems

    def image_features(self, x: Tensor) -> Tensor:
        """The globally pooled layer features DFKDE models: (B, C), pooled as anomalib pools them."""
        (features,) = self.model.feature_extractor(self.prepare(x)).values()
        return torch.nn.functional.adaptive_avg_pool2d(features, (1, 1)).reshape(features.shape[0], -1)

    def score_images(self, x: Tensor) -> AnomalyOutput:
        score = self.model.classifier(self.image_features(x))
        return AnomalyOutput(score=score, map=score[:, None, None].expand(-1, *x.shape[-2:]))
