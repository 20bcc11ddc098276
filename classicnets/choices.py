"""Every fixed list of choices, defined once: the library checks values against these and the command line offers
them as `choices=`. No imports, so `classicnets --help` stays instant.
"""

from __future__ import annotations

# Optimisers and learning-rate schedules of `train` (classicnets.training.optim).
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
# Training augmentation recipes (classicnets.data.transforms): auto (what the data set calls for: paper for photos,
# pad_crop for CIFAR, none for digits and clothes), the paper's crops and flips, random-resized crops, CIFAR's
# pad-4 random crops and flips, or none (digits, where a mirrored 2 is not a 2).
AUGMENTATIONS = ("auto", "paper", "modern", "pad_crop", "none")
# The decode cache of image folders (classicnets.data.cache): auto (use it when the data and model suit it and it
# fits on the disk), always (or stop with the reason), never (decode every image every epoch).
DATA_CACHE = ("auto", "always", "never")
# CIFAR-100's two label sets: 100 fine classes or 20 coarse superclasses (Keras' cifar100.load_data(label_mode=)).
LABEL_MODES = ("fine", "coarse")
# Numeric precision of a run (classicnets.runtime.resolve_precision); "auto" picks per device.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Weight files classicnets reads (classicnets.weights.load) and writes (classicnets.weights.export).
IMPORT_FORMATS = ("auto", "classicnets", "caffe-npy", "torchvision", "safetensors")
EXPORT_FORMATS = ("safetensors", "onnx", "torchscript")
# What runs the model in `predict`: torch (the default path), or onnxruntime's CPU provider on our ONNX export.
RUNTIMES = ("torch", "onnxruntime")
# What `bench` times: forward only, the training step, or both.
BENCH_MODES = ("infer", "train", "both")
# How `prepare` places files in DST.
PREPARE_MODES = ("copy", "link", "move")
# The splits of a prepared folder, in order.
SPLIT_NAMES = ("train", "val", "test")
