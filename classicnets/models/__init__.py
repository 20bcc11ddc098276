"""The networks: the registry, what each expects as input, the layers they share, one file per family.

    registry.py      register_model, create_model, list_models, get_model_info
    preprocessing.py Preprocessing (input size, resize, mean/std, channel order) and the known conventions
    base.py          ClassicNet: the input-size check and the replaceable classifier head
    lrn.py           LocalResponseNorm (paper / Caffe / TensorFlow constants), exact and fast
    keras_layers.py  TensorFlow's "same" padding, Keras' BatchNorm constants and initialisation
    fast_layers.py   oneDNN versions of Conv2d / Linear that runtime.prepare_model swaps in on CPU
    summary.py       layer-by-layer shapes, parameters and MACs
    alexnet.py, vgg.py, googlenet.py, resnet.py, lenet.py: the families; alexnet_variants.py: the tutorials' AlexNets

Importing this package registers every built-in model. This is the one import cycle in classicnets, on purpose:
each family module imports `registry.register_model` to register itself, and `registry` imports this package
(lazily, inside `_load_builtin_models`) the first time a name is looked up, as torchvision's and timm's registries do.
"""

from classicnets.models import alexnet, alexnet_variants, googlenet, lenet, resnet, vgg  # noqa: F401  (registers)
from classicnets.models.base import ClassicNet
from classicnets.models.lrn import LocalResponseNorm, use_torch_lrn
from classicnets.models.preprocessing import Preprocessing
from classicnets.models.registry import create_model, get_model_info, list_models, register_model

__all__ = [
    "ClassicNet",
    "LocalResponseNorm",
    "Preprocessing",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
    "use_torch_lrn",
]
