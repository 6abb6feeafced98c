"""Readers for the on-disk formats of MNIST, Fashion-MNIST and CIFAR, without torchvision.

The files are expected where torchvision puts them, so a ``root`` torchvision downloaded into
works as is:

- ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (IDX format; same
  under ``<root>/FashionMNIST/raw``);
- ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` and
  ``<root>/cifar-100-python/{train,test,meta}`` (Python pickles of numpy arrays).

Images come back as float tensors, scaled to [0, 1] and then standardised with the dataset's
usual channel mean and standard deviation unless ``normalize=False``.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raycl.checks import check_choice

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "FASHION_MNIST_STATS",
    "MNIST_STATS",
    "cifar_files_present",
    "load_cifar_tensors",
    "load_mnist_tensors",
    "mnist_files_present",
    "read_cifar_meta",
    "read_idx",
]

#: (mean, std) per channel of the training images scaled to [0, 1].
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

_CIFAR = {
    10: {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
         "test": ["test_batch"], "labels": "labels", "meta": "batches.meta",
         "names": "label_names", "stats": CIFAR10_STATS},
    100: {"folder": "cifar-100-python", "train": ["train"], "test": ["test"],
          "labels": "fine_labels", "meta": "meta", "names": "fine_label_names",
          "stats": CIFAR100_STATS},
}


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (plain or ``.gz``), as a tensor of its element type."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX data (header says {dims})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype to the native byte order also gives torch a writable copy.
    return torch.from_numpy(arr.astype(dtype.newbyteorder("=")))


def _mnist_paths(root: str | Path, name: str) -> dict[str, tuple[Path, Path]]:
    raw = Path(root).expanduser() / _MNIST_FOLDERS[name] / "raw"
    return {split: tuple(_existing(raw / f) for f in files)  # type: ignore[misc]
            for split, files in _MNIST_FILES.items()}


def _existing(path: Path) -> Path:
    """``path`` or ``path.gz``, whichever exists (``path`` itself if neither)."""
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else path


def mnist_files_present(root: str | Path, name: str = "mnist") -> bool:
    """Whether the four IDX files of ``name`` ('mnist' or 'fashion_mnist') are under root."""
    return all(p.exists() for pair in _mnist_paths(root, name).values() for p in pair)


def load_mnist_tensors(root: str | Path, name: str = "mnist", flatten: bool = True,
                       normalize: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of MNIST or Fashion-MNIST read from IDX files.

    Args:
        root: folder holding ``MNIST/raw`` (or ``FashionMNIST/raw``), torchvision's layout.
        name: 'mnist' or 'fashion_mnist'.
        flatten: images as ``(N, 784)`` rows (for MLPs); else ``(N, 1, 28, 28)``.
        normalize: standardise with the dataset mean/std; else values in [0, 1].
    """
    check_choice("name", name, sorted(_MNIST_FOLDERS))
    paths = _mnist_paths(root, name)
    for images, labels in paths.values():
        for p in (images, labels):
            if not p.exists():
                raise FileNotFoundError(
                    f"{_MNIST_FOLDERS[name]} file not found: {p}[.gz]; pass download=True "
                    f"(needs torchvision: pip install raycl[vision]) or put the IDX files there")
    stats = MNIST_STATS if name == "mnist" else FASHION_MNIST_STATS
    out: list[Tensor] = []
    for images_path, labels_path in paths.values():
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images_path}: expected (N, H, W) images and N labels, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        out += [_to_float(images.unsqueeze(1), stats, normalize, flatten), labels.long()]
    return out[0], out[1], out[2], out[3]


def _to_float(images: Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]],
              normalize: bool, flatten: bool) -> Tensor:
    """uint8 (N, C, H, W) -> float32, scaled to [0, 1] and optionally standardised."""
    x = images.float().div_(255.0)
    if normalize:
        mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
        std = torch.tensor(stats[1]).view(1, -1, 1, 1)
        x.sub_(mean).div_(std)
    return x.flatten(1) if flatten else x


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only.

    The CIFAR files are pickles; refusing every other global means a tampered file cannot run
    code when loaded.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        # latin1 reads the Python 2 pickles CIFAR ships (their numpy buffers are str).
        obj = _ArrayUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_spec(n_classes: int) -> dict[str, Any]:
    return _CIFAR[check_choice("n_classes", n_classes, tuple(_CIFAR))]


def cifar_files_present(root: str | Path, n_classes: int = 10) -> bool:
    """Whether the train and test batch files of CIFAR-``n_classes`` are under root."""
    spec = _cifar_spec(n_classes)
    folder = Path(root).expanduser() / spec["folder"]
    return all((folder / f).exists() for f in spec["train"] + spec["test"])


def read_cifar_meta(root: str | Path, n_classes: int = 10) -> list[str]:
    """The class names stored in CIFAR's meta file, indexed by label."""
    spec = _cifar_spec(n_classes)
    path = Path(root).expanduser() / spec["folder"] / spec["meta"]
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-{n_classes} meta file not found: {path}")
    names = _unpickle(path)[spec["names"]]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar_tensors(root: str | Path, n_classes: int = 10, flatten: bool = False,
                       normalize: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of CIFAR-10 or CIFAR-100 (fine labels).

    Args:
        root: folder holding ``cifar-10-batches-py`` or ``cifar-100-python``.
        n_classes: 10 or 100.
        flatten: images as ``(N, 3072)`` rows; else ``(N, 3, 32, 32)``.
        normalize: standardise each channel with the dataset mean/std; else values in [0, 1].
    """
    spec = _cifar_spec(n_classes)
    folder = Path(root).expanduser() / spec["folder"]
    out: list[Tensor] = []
    for split in ("train", "test"):
        images, labels = [], []
        for name in spec[split]:
            path = folder / name
            if not path.exists():
                raise FileNotFoundError(
                    f"CIFAR-{n_classes} file not found: {path}; pass download=True (needs "
                    f"torchvision: pip install raycl[vision]) or extract the python version there")
            batch = _unpickle(path)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
            labels.append(np.asarray(batch[spec["labels"]], dtype=np.int64))
            images.append(data.reshape(-1, 3, 32, 32))
            if labels[-1].shape != (data.shape[0],):
                raise ValueError(f"{path}: {data.shape[0]} images but {labels[-1].shape} labels")
        x = torch.from_numpy(np.concatenate(images))
        out += [_to_float(x, spec["stats"], normalize, flatten),
                torch.from_numpy(np.concatenate(labels))]
    return out[0], out[1], out[2], out[3]
