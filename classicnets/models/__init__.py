"""The built-in models. Importing this package registers them all (see classicnets.registry)."""

from classicnets.models import alexnet, googlenet, lenet, resnet, vgg  # noqa: F401  (registers the models)
from classicnets.models.base import ClassicNet
from classicnets.models.layers import LocalResponseNorm, use_torch_lrn

__all__ = ["ClassicNet", "LocalResponseNorm", "use_torch_lrn"]
