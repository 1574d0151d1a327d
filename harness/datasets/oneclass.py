"""One-class novelty detection (seed 003): CIFAR-10, CIFAR-100 (20 super-classes), MNIST,
Fashion-MNIST, read from their official files.

Normal = one class (the category); train = that class's training images; test = the
whole test split, every other class anomalous. Image-level only (no masks). Images are
resized bilinearly to ``image_size`` and grey ones replicated to three channels.

    cifar10:  cifar-10-batches-py/{data_batch_1..5, test_batch}      (python pickles)
    cifar100: cifar-100-python/{train, test}                         (coarse_labels used)
    mnist, fashion_mnist: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]  (or <root>/raw/, torchvision's)
"""

from __future__ import annotations

import gzip
import pickle
from abc import abstractmethod
from functools import cache
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F

from robustad_bench.core.errors import UserError
from robustad_bench.core.schema import AtLeast

from .base import Split, digest, register_dataset
from .layout import CheckRow, Counts, Download, FolderDataset, Listing

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
    "household_furniture", "insects", "large_carnivores", "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals",
    "trees", "vehicles_1", "vehicles_2",
]
FASHION = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
MNIST_TRAIN = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


class OneClass(FolderDataset):
    """Arrays from official files; ``arrays(split)`` returns (N, H, W[, 3]) uint8 and labels."""

    has_masks = False
    files: dict[str, tuple[str, ...]] = {}  # split → the files it reads, relative to the root

    def __init__(self, root: str | None = None, categories: list[str] | None = None, image_size: Annotated[int, AtLeast(8)] = 32):
        super().__init__(root, categories, image_size)

    @abstractmethod
    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``split`` is "train" or "test"."""

    def path(self, relative: str) -> Path:
        """The file under the root, or under ``raw/`` (torchvision's copy), gzipped or not."""
        for base in (self.root, self.root / "raw"):
            for candidate in (base / relative, base / f"{relative}.gz"):
                if candidate.is_file():
                    return candidate
        raise UserError(f"{str(self.root / relative)!r} (or .gz, or under raw/) not found: expected {self.layout}", key="root")

    def index(self, category: str) -> Listing:  # the files, for fingerprints; the images are arrays
        return Listing([self.path(f) for split in ("train", "test") for f in self.files[split]], [])

    def fingerprint(self, category: str, *, seed: int) -> str:
        files = [(p.name, p.stat().st_size) for p in self.index(category).train]
        return digest({"files": files, "category": category, "image_size": self.image_size})[:16]

    def split_of(self, category: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cls = list(self.published).index(category)
        train_x, train_y = self.arrays("train")
        test_x, test_y = self.arrays("test")
        return train_x[train_y == cls], test_x, (test_y != cls).astype(int)

    def check(self, category: str) -> CheckRow:
        row = CheckRow(category, published=self.expected(category))
        try:
            train, _, labels = self.split_of(category)
        except UserError as err:
            row.problems.append(str(err).removeprefix("root: "))
            return row
        row.found = Counts(len(train), int((labels == 0).sum()), int(labels.sum()))
        if row.found != row.published:
            row.warnings.append(f"counts differ from the published {row.published}")
        return row

    def load(self, category: str, *, seed: int, data_dir: Path) -> Split:
        train, test, labels = self.split_of(category)
        names = [f"{'good' if y == 0 else 'other'}/{i:05d}" for i, y in enumerate(labels)]
        return Split(self.resize(train), self.resize(test), labels, None, names)

    def resize(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255)  # a copy: cached arrays stay read-only
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
        return x.expand(-1, 3, -1, -1).contiguous()


@cache
def read_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"cannot read {str(path)!r} as a CIFAR python batch: {err}") from err


@cache
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic (0, 0, dtype 0x08, ndim), big-endian sizes, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UserError(f"cannot read {str(path)!r}: {err}") from err
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{str(path)!r} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{str(path)!r} holds {body.size} bytes, its header says {shape}")
    return body.reshape(shape)


@register_dataset("cifar10")
class Cifar10(OneClass):
    name = "cifar10"
    version = "1"
    layout = "cifar-10-batches-py/data_batch_1..5 and test_batch (the python version)"
    files = {"train": tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)), "test": ("cifar-10-batches-py/test_batch",)}
    published = {c: Counts(5000, 1000, 9000) for c in CIFAR10}
    download = Download(
        page="https://www.cs.toronto.edu/~kriz/cifar.html", licence="no licence stated; cite Krizhevsky (2009)",
        archives=(("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"),),
        extract="mkdir -p $ROBUSTAD_DATA/cifar10 && tar -xzf cifar-10-python.tar.gz -C $ROBUSTAD_DATA/cifar10",
        note="the site publishes md5, not sha256",
    )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        batches = [read_pickle(self.path(f)) for f in self.files[split]]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.concatenate([b["labels"] for b in batches])


@register_dataset("cifar100")
class Cifar100(OneClass):
    name = "cifar100"
    version = "1"
    layout = "cifar-100-python/train and test (the python version; its coarse_labels are the 20 super-classes)"
    files = {"train": ("cifar-100-python/train",), "test": ("cifar-100-python/test",)}
    published = {c: Counts(2500, 500, 9500) for c in CIFAR100_COARSE}
    download = Download(
        page="https://www.cs.toronto.edu/~kriz/cifar.html", licence="no licence stated; cite Krizhevsky (2009)",
        archives=(("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "md5:eb9058c3a382ffc7106e4002c42a8d85"),),
        extract="mkdir -p $ROBUSTAD_DATA/cifar100 && tar -xzf cifar-100-python.tar.gz -C $ROBUSTAD_DATA/cifar100",
        note="the site publishes md5, not sha256",
    )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        batch = read_pickle(self.path(self.files[split][0]))
        return np.asarray(batch["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(batch["coarse_labels"])


class IDX(OneClass):
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    layout = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or not)"

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = (read_idx(self.path(f)) for f in self.files[split])
        if len(images) != len(labels):
            raise UserError(f"{split}: {len(images)} images but {len(labels)} labels under {str(self.root)!r}")
        return images, labels


@register_dataset("mnist")
class MNIST(IDX):
    name = "mnist"
    version = "1"
    published = {str(d): Counts(MNIST_TRAIN[d], MNIST_TEST[d], 10000 - MNIST_TEST[d]) for d in range(10)}
    download = Download(
        page="https://yann.lecun.com/exdb/mnist/ (mirrored by torchvision at https://ossci-datasets.s3.amazonaws.com/mnist/)",
        licence="CC BY-SA 3.0",
        archives=tuple((f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}.gz", f"md5:{m}") for f, m in (
            ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"), ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"), ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"))),
        extract="put the four .gz files in $ROBUSTAD_DATA/mnist (they are read gzipped)",
        note="torchvision publishes md5, not sha256",
    )


@register_dataset("fashion_mnist")
class FashionMNIST(IDX):
    name = "fashion_mnist"
    version = "1"
    published = {c: Counts(6000, 1000, 9000) for c in FASHION}
    download = Download(
        page="https://github.com/zalandoresearch/fashion-mnist", licence="MIT",
        archives=tuple((f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{f}.gz", f"md5:{m}") for f, m in (
            ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"), ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"), ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"))),
        extract="put the four .gz files in $ROBUSTAD_DATA/fashion_mnist (they are read gzipped)",
        note="the repository publishes md5, not sha256",
    )
