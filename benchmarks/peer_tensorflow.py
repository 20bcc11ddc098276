"""TensorFlow's Keras AlexNet training step on this CPU, for side-by-side ratios with `classicnets bench`.

Times what a user of the TensorFlow tutorials would run instead of classicnets: a Keras AlexNet trained with
SGD (momentum 0.9) in a `tf.function` step (GradientTape, sparse cross-entropy from logits, apply_gradients), on a
random batch already in memory, in fp32 and under Keras' `mixed_bfloat16` policy:

  tv      torchvision's layout at 224 x 224 (64-192-384-256-256 convolutions, no LRN, groups 1): the network of
          `classicnets bench --model alexnet`
  paper   the 2012 paper's at 227 x 227 (96-256-384-384-256, LRN after conv1 and conv2 with the paper's constants
          through tf.nn.local_response_normalization, conv2/4/5 with groups=2): `classicnets bench --model
          alexnet2012`. TensorFlow has no bf16 LRN kernel, so under mixed_bfloat16 the LRN is computed in float32
          and cast back, as classicnets' own LRN does.

Each configuration: --warmup untimed steps (tracing, kernel selection), then --steps timed ones, each ended by
reading the loss (so the step's work is done); printed as median ms per step and images/s = batch / median.
Intra- and inter-op threads are both --threads (2: the test machines' cores).

TensorFlow is not a dependency of classicnets: run this with a Python that has it, for example a separate
virtual environment (`python3 -m venv ~/tf && ~/tf/bin/pip install tensorflow-cpu`); without it the script says so
and exits 0. The matching classicnets figures:

    classicnets bench --model alexnet --batch-size 32 --mode train --threads 2 --precision fp32   # and bf16
    classicnets bench --model alexnet2012 --batch-size 32 --mode train --threads 2 --precision fp32

    python benchmarks/peer_tensorflow.py [--models tv,paper] [--precisions fp32,bf16] [--batch-size 32]
                                         [--threads 2] [--warmup 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

# The paper's LRN (Krizhevsky et al. 2012, section 3.3): n = 5 channels (radius 2), k = 2, alpha = 1e-4 on the
# plain sum of squares (TensorFlow's convention is the paper's), beta = 0.75.
LRN = {"depth_radius": 2, "bias": 2.0, "alpha": 1e-4, "beta": 0.75}
SIZES = {"tv": 224, "paper": 227}
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}
LEARNING_RATE = 0.01  # the paper's; any finite value times the same arithmetic


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tv,paper", help="tv, paper or both (default tv,paper)")
    p.add_argument("--precisions", default="fp32,bf16", help="fp32, bf16 (mixed_bfloat16) or both")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="intra- and inter-op threads (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.precisions = [m for m in args.precisions.split(",") if m]
    bad = [m for m in args.models if m not in SIZES] + [m for m in args.precisions if m not in POLICIES]
    if bad or args.batch_size < 1 or args.threads < 1 or args.steps < 1 or args.warmup < 0:
        p.error(f"bad value(s): {', '.join(bad) or 'batch size, threads and steps must be >= 1, warmup >= 0'}")
    return args


def import_tensorflow(threads: int) -> Any | None:
    """TensorFlow with `threads` intra- and inter-op threads, or None (with a message) when it is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no start-up banner on every line of output
    try:
        import tensorflow as tf
    except ImportError as e:
        print(
            f"skipped: TensorFlow is not importable with {sys.executable} ({e}). classicnets does not depend on it; "
            "run this script with a Python that has it (e.g. a separate venv with `pip install tensorflow-cpu`)."
        )
        return None
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def build_model(tf: Any, name: str, num_classes: int = 1000) -> Any:
    """The Keras AlexNet `name` under the current global precision policy; logits in float32 (Keras' advice for
    mixed precision: the softmax and loss in full precision)."""
    layers = tf.keras.layers

    class LocalResponseNorm(layers.Layer):
        def call(self, x):
            return tf.cast(tf.nn.local_response_normalization(tf.cast(x, tf.float32), **LRN), x.dtype)

    def conv(filters: int, kernel: int, stride: int = 1, groups: int = 1, padding: str = "same") -> Any:
        return layers.Conv2D(filters, kernel, stride, padding=padding, groups=groups, activation="relu")

    size = SIZES[name]
    if name == "tv":  # torchvision.models.alexnet: padding 2 on conv1, 224 -> 55
        features = [layers.ZeroPadding2D(2), conv(64, 11, 4, padding="valid"), layers.MaxPool2D(3, 2),
                    conv(192, 5), layers.MaxPool2D(3, 2), conv(384, 3), conv(256, 3), conv(256, 3),
                    layers.MaxPool2D(3, 2)]  # fmt: skip
    else:  # the paper's: 227 -> 55 without padding, LRN after the ReLU before pooling, two groups (GPUs)
        features = [conv(96, 11, 4, padding="valid"), LocalResponseNorm(), layers.MaxPool2D(3, 2),
                    conv(256, 5, groups=2), LocalResponseNorm(), layers.MaxPool2D(3, 2), conv(384, 3),
                    conv(384, 3, groups=2), conv(256, 3, groups=2), layers.MaxPool2D(3, 2)]  # fmt: skip
    classifier = [layers.Flatten(), layers.Dropout(0.5), layers.Dense(4096, activation="relu"), layers.Dropout(0.5),
                  layers.Dense(4096, activation="relu"), layers.Dense(num_classes, dtype="float32")]  # fmt: skip
    return tf.keras.Sequential([tf.keras.Input((size, size, 3)), *features, *classifier])


def time_training_step(tf: Any, name: str, precision: str, args: argparse.Namespace) -> list[float]:
    """Seconds per training step, for each of args.steps timed steps."""
    tf.keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        model = build_model(tf, name)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    size = SIZES[name]
    x = tf.random.normal((args.batch_size, size, size, 3), seed=0)
    y = tf.random.uniform((args.batch_size,), 0, 1000, dtype=tf.int32, seed=1)
    optimizer = tf.keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    seconds = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step(x, y).numpy()  # reading the loss waits for the step
        if i >= args.warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tf = import_tensorflow(args.threads)
    if tf is None:
        return 0
    print(
        f"TensorFlow {tf.__version__}, Keras {tf.keras.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"SGD momentum 0.9, tf.function; median of {args.steps} steps after {args.warmup} untimed"
    )
    for name in args.models:
        for precision in args.precisions:
            label = f"{name} ({SIZES[name]}) {POLICIES[precision]}"
            try:
                seconds = time_training_step(tf, name, precision, args)
            except Exception as e:  # a configuration TensorFlow cannot run here: say so, time the others
                print(f"{label}: failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}")
                continue
            median = statistics.median(seconds)
            print(f"{label}: training step median {median * 1e3:.1f} ms ({args.batch_size / median:.1f} img/s), "
                  f"min {min(seconds) * 1e3:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
