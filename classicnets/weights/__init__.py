"""Weights in and out: import Caffe's bvlc_alexnet.npy, torchvision state dicts and our own files safely,
fine-tuning surgery, and export to safetensors, ONNX and TorchScript.

    load.py        load_weights(path, model=..., num_classes=..., fmt=...): any file we read (or a known name)
                   -> a ready model
    known.py       the pretrained weights known by name (alexnet.imagenet ...): URL, hash, size, accuracy
    hub.py         the cache folder and the checked, resumable, locked download of known weights
    pretrained.py  create_model(name, weights="imagenet") and get_weights(name) for Python users
    safe_npy.py    the restricted unpickler for pickled .npy files (no code runs while loading)
    caffe.py       bvlc_alexnet.npy: TensorFlow layout -> alexnet2012 with Caffe's LRN and preprocessing
    state_dicts.py torchvision / plain state dicts: unwrap, strip prefixes, strict key and shape check
    metadata.py    the model, preprocessing and class names written into exported files
    surgery.py     finetune_surgery (re-initialise, freeze) and param_groups (a larger lr for new layers)
    export.py      export(model, path, fmt=safetensors|onnx|torchscript)
"""

from classicnets.weights.export import ExportResult, export, format_from_suffix
from classicnets.weights.known import KnownWeights, list_known_weights
from classicnets.weights.load import detect_format, imagenet_classes, load_weights, replace_head
from classicnets.weights.pretrained import get_weights
from classicnets.weights.surgery import finetune_surgery, param_groups, resolve_layer

__all__ = [
    "ExportResult",
    "KnownWeights",
    "export",
    "format_from_suffix",
    "detect_format",
    "finetune_surgery",
    "get_weights",
    "imagenet_classes",
    "list_known_weights",
    "load_weights",
    "param_groups",
    "replace_head",
    "resolve_layer",
]
