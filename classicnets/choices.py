"""Every fixed list of choices, defined once: the library checks values against these and the command line offers
them as `choices=`. No imports, so `classicnets --help` stays instant.
"""

from __future__ import annotations

# Optimisers and learning-rate schedules of `train` (classicnets.training.optim).
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
# Training augmentation recipes (classicnets.data.transforms): the paper's crops and flips, random-resized crops,
# or none (digits, where a mirrored 2 is not a 2).
AUGMENTATIONS = ("paper", "modern", "none")
# Numeric precision of a run (classicnets.runtime.resolve_precision); "auto" picks per device.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Weight files classicnets reads (classicnets.weights.load) and writes (classicnets.weights.export).
IMPORT_FORMATS = ("auto", "classicnets", "caffe-npy", "torchvision", "safetensors")
EXPORT_FORMATS = ("safetensors", "onnx", "torchscript")
# What `bench` times: forward only, the training step, or both.
BENCH_MODES = ("infer", "train", "both")
# How `prepare` places files in DST.
PREPARE_MODES = ("copy", "link", "move")
# The splits of a prepared folder, in order.
SPLIT_NAMES = ("train", "val", "test")
