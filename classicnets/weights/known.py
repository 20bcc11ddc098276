"""The pretrained weights classicnets knows by name: where each file is, how it is checked, what it scored.

A name is MODEL.TAG (`alexnet.imagenet`, `resnet50.imagenet_v2`); where the network is given too
(`--model alexnet --weights imagenet`, `load_weights("imagenet", model="alexnet")`) the tag alone does. Every fact
below is copied from its publisher; docs/facts.md gives the source of each, docs/weights.md the usage.

- torchvision (pytorch/vision, torchvision/models/{alexnet,vgg,googlenet,resnet}.py, the `*_Weights` enums): the URL,
  `num_params`, `_metrics` (ImageNet-1K acc@1 / acc@5, single centre crop), `_file_size` (MiB, 3 decimals) and the
  `ImageClassification` transform (resize 256, or 232 for the V2 ResNets; centre crop 224; bilinear; ImageNet
  mean/std). torchvision checks a download by the hex digits in its file name (`resnet18-f37072fd.pth`): they must
  begin the file's SHA-256 (torch.hub's `check_hash`, HASH_REGEX `-([a-f0-9]*)\\.`). We check the same digits.
- Caffe's bvlc_alexnet as the `.npy` the TensorFlow fine-tuning tutorials download (M. Guerzhoy's conversion, linked
  from Kratzert's "Finetuning AlexNet with TensorFlow"): no hash is published, so the exact size is checked and the
  strict, shape-checked load (classicnets/weights/caffe.py) does the rest. Accuracy: BVLC's model zoo readme.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from classicnets.errors import UsageError
from classicnets.models.preprocessing import Preprocessing
from classicnets.weights.caffe import CAFFE_PREPROCESSING

# torchvision's ImageClassification(crop_size=224) and, for the V2 ResNets, resize_size=232 (torchvision weights).
TORCHVISION_V1 = Preprocessing(input_size=(3, 224, 224), resize_size=256, interpolation="bilinear")
TORCHVISION_V2 = replace(TORCHVISION_V1, resize_size=232)
TORCHVISION_MODELS = "https://download.pytorch.org/models/"
TORCHVISION_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification"
IMAGENET_CLASSES = 1000  # ImageNet-1k in synset order, shipped as classicnets/assets/imagenet_classes.txt
# Weight file suffixes: a --weights value ending in one of them is a path, never a name.
WEIGHT_SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors", ".onnx", ".ts", ".bin", ".ckpt", ".tar")


@dataclass(frozen=True)
class KnownWeights:
    """One published weight file for a registered network."""

    model: str  # the registered network the file fits (`classicnets models`)
    tag: str  # "imagenet" (the publisher's first ImageNet weights) or "imagenet_v2"
    url: str
    sha256: str | None  # the first hex digits of the file's SHA-256 as published (torchvision: 8); None: unpublished
    size_mib: float  # the file's size in MiB (torchvision's `_file_size`, 3 decimals)
    size_bytes: int | None  # the exact size where it is published (then checked)
    fmt: str  # how classicnets.weights.load reads it: "torchvision" or "caffe-npy"
    top1: float  # ImageNet-1k validation accuracy (%), single centre crop, as the publisher reports it
    top5: float
    accuracy_source: str  # where top1/top5 are published
    decimals: int  # how many decimals the publisher gives (torchvision 3, Caffe 1), for tables
    num_params: int  # of the network with its 1000-class head (publisher's figure; a test checks ours)
    preprocessing: Preprocessing
    publisher: str
    num_classes: int = IMAGENET_CLASSES

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "model": self.model, "tag": self.tag, "url": self.url, "file": self.file_name,
            "sha256": self.sha256, "size_mib": self.size_mib, "size_bytes": self.size_bytes, "format": self.fmt,
            "top1": self.top1, "top5": self.top5, "accuracy_source": self.accuracy_source, "decimals": self.decimals,
            "num_params": self.num_params, "num_classes": self.num_classes, "classes": "ImageNet-1k (shipped)",
            "preprocessing": self.preprocessing.to_dict(), "publisher": self.publisher,
        }  # fmt: skip


def _torchvision(
    model: str, file: str, size_mib: float, top1: float, top5: float, params: int, *, tag: str = "imagenet"
) -> KnownWeights:
    family = re.sub(r"\d.*", "", model)  # the torchvision module: alexnet, vgg, googlenet, resnet
    version = "V2" if tag == "imagenet_v2" else "V1"
    return KnownWeights(
        model=model,
        tag=tag,
        url=TORCHVISION_MODELS + file,
        sha256=file.rsplit("-", 1)[-1].split(".")[0],  # the digits torchvision checks (torch.hub HASH_REGEX)
        size_mib=size_mib,
        size_bytes=None,
        fmt="torchvision",
        top1=top1,
        top5=top5,
        accuracy_source=f"torchvision/models/{family}.py, {model} IMAGENET1K_{version} _metrics",
        decimals=3,
        num_params=params,
        preprocessing=TORCHVISION_V2 if tag == "imagenet_v2" else TORCHVISION_V1,
        publisher="torchvision",
    )


# fmt: off
KNOWN_WEIGHTS: dict[str, KnownWeights] = {w.name: w for w in (
    _torchvision("alexnet", "alexnet-owt-7be5be79.pth", 233.087, 56.522, 79.066, 61_100_840),
    KnownWeights(
        model="alexnet2012", tag="imagenet",
        url="https://www.cs.toronto.edu/~guerzhoy/tf_alexnet/bvlc_alexnet.npy",
        sha256=None, size_mib=232.565, size_bytes=243_861_814, fmt="caffe-npy", top1=57.1, top5=80.2,
        accuracy_source="BVLC Caffe, the readme of models/bvlc_alexnet (centre crop)", decimals=1,
        num_params=60_965_224,
        preprocessing=CAFFE_PREPROCESSING, publisher="BVLC Caffe, converted to .npy by M. Guerzhoy",
    ),
    _torchvision("vgg11", "vgg11-8a719046.pth", 506.840, 69.020, 88.628, 132_863_336),
    _torchvision("vgg11_bn", "vgg11_bn-6002323d.pth", 506.881, 70.370, 89.810, 132_868_840),
    _torchvision("vgg13", "vgg13-19584684.pth", 507.545, 69.928, 89.246, 133_047_848),
    _torchvision("vgg13_bn", "vgg13_bn-abd245e5.pth", 507.590, 71.586, 90.374, 133_053_736),
    _torchvision("vgg16", "vgg16-397923af.pth", 527.796, 71.592, 90.382, 138_357_544),
    _torchvision("vgg16_bn", "vgg16_bn-6c64b313.pth", 527.866, 73.360, 91.516, 138_365_992),
    _torchvision("vgg19", "vgg19-dcbb9e9d.pth", 548.051, 72.376, 90.876, 143_667_240),
    _torchvision("vgg19_bn", "vgg19_bn-c79401a0.pth", 548.143, 74.218, 91.842, 143_678_248),
    _torchvision("googlenet", "googlenet-1378be20.pth", 49.731, 69.778, 89.530, 6_624_904),
    _torchvision("resnet18", "resnet18-f37072fd.pth", 44.661, 69.758, 89.078, 11_689_512),
    _torchvision("resnet34", "resnet34-b627a593.pth", 83.275, 73.314, 91.420, 21_797_672),
    _torchvision("resnet50", "resnet50-0676ba61.pth", 97.781, 76.130, 92.862, 25_557_032),
    _torchvision("resnet50", "resnet50-11ad3fa6.pth", 97.790, 80.858, 95.434, 25_557_032, tag="imagenet_v2"),
    _torchvision("resnet101", "resnet101-63fe2227.pth", 170.511, 77.374, 93.546, 44_549_160),
    _torchvision("resnet101", "resnet101-cd907fc2.pth", 170.530, 81.886, 95.780, 44_549_160, tag="imagenet_v2"),
    _torchvision("resnet152", "resnet152-394f9c45.pth", 230.434, 78.312, 94.046, 60_192_808),
    _torchvision("resnet152", "resnet152-f82ba261.pth", 230.474, 82.284, 96.002, 60_192_808, tag="imagenet_v2"),
)}
# fmt: on
TAGS = tuple(sorted({w.tag for w in KNOWN_WEIGHTS.values()}))


def list_known_weights(pattern: str = "*") -> list[KnownWeights]:
    """The known weights whose name matches a shell-style pattern (`"resnet*"`), in table order."""
    return [w for name, w in KNOWN_WEIGHTS.items() if fnmatch.fnmatch(name, pattern)]


def looks_like_path(spec: str | os.PathLike) -> bool:
    """Whether a --weights value can only be a file: it exists, has a folder in it, or ends in a weight-file
    suffix. (A folder that happens to be called `imagenet` does not hide the name.)"""
    text = os.fspath(spec)
    return Path(text).is_file() or "/" in text or os.sep in text or text.lower().endswith(WEIGHT_SUFFIXES)


def find_known_weights(spec: str | os.PathLike, model: str | None = None) -> KnownWeights | None:
    """The known weights `spec` names ("alexnet.imagenet", or "imagenet" with `model`), None when `spec` is a path.

    A file that exists always wins over a name. A value that is neither (no such file, no such name) raises
    UsageError naming the closest known names.
    """
    if not isinstance(spec, str) or looks_like_path(spec):
        return None
    name = spec.lower()
    if name in TAGS:
        if model is None:
            examples = ", ".join(w.name for w in list_known_weights(f"*.{name}")[:4])
            raise UsageError(
                f"{spec!r} weights need the network: give the model (--model alexnet) or write MODEL.{name} "
                f"(e.g. {examples}; `classicnets weights` lists them)"
            )
        name = f"{model}.{name}"
    found = KNOWN_WEIGHTS.get(name)
    if found is None:
        raise UsageError(_unknown_message(name if name != spec.lower() else spec, name, model))
    if model is not None and model != found.model:
        raise UsageError(f"{spec} are {found.model} weights, not {model}")
    return found


def _unknown_message(shown: str, name: str, model: str | None) -> str:
    if model is not None:
        own = [w.name for w in KNOWN_WEIGHTS.values() if w.model == model]
        if own:
            return f"unknown weights {shown!r} (and no such file); {model} has {', '.join(own)}"
        having = ", ".join(dict.fromkeys(w.model for w in KNOWN_WEIGHTS.values()))
        return f"classicnets knows no pretrained weights for {model} (it has them for {having})"
    close = difflib.get_close_matches(name, KNOWN_WEIGHTS, n=4, cutoff=0.5)
    hint = f"closest: {', '.join(close)}" if close else "`classicnets weights` lists the known names"
    return f"unknown weights {shown!r} (and no such file); {hint}"


def weights_reference(spec: str | os.PathLike, model: str | None) -> str:
    """What a run's config.yaml records for --weights: the full known name, or the absolute path of the file."""
    known = find_known_weights(spec, model)
    return known.name if known is not None else str(Path(spec).resolve())
