"""classicnets: the classic CNN image classifiers (LeNet-5, AlexNet, VGG, GoogLeNet, ResNet), done properly.

The public API is re-exported here lazily, so `import classicnets` (and `classicnets --help`) does not pay for
importing torch until a function is used.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "create_model": "classicnets.weights.pretrained",  # the registry's, plus weights="imagenet"
    "list_models": "classicnets.models.registry",
    "get_model_info": "classicnets.models.registry",
    "register_model": "classicnets.models.registry",
    "Preprocessing": "classicnets.models.preprocessing",
    "summarize": "classicnets.models.summary",
    "ClassicNetsError": "classicnets.errors",
    "load_weights": "classicnets.weights",
    "get_weights": "classicnets.weights.pretrained",
    "finetune_surgery": "classicnets.weights",
    "param_groups": "classicnets.weights",
    "fit": "classicnets.training.loop",
    "evaluate": "classicnets.inference.evaluation",
    "predict": "classicnets.inference.prediction",
    "show_filters": "classicnets.inference.explain",
    "show_activations": "classicnets.inference.explain",
    "show_gradcam": "classicnets.inference.explain",
    "show_neighbours": "classicnets.inference.explain",
    "write_report": "classicnets.inference.report",
    "resolve_config": "classicnets.config",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'classicnets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
