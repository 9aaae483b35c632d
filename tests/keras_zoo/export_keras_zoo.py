"""Export Keras applications to ONNX with tf2onnx, for tests/test_keras_zoo.py (an optional extra).

TensorFlow is never a dependency of fp-onnx or of its CI. Run this script with a separate
environment that has TensorFlow and tf2onnx, for example:

    python3 -m venv /work/kerasenv
    /work/kerasenv/bin/pip install 'tensorflow-cpu==2.21.*' 'tf2onnx==1.17.*'
    /work/kerasenv/bin/python tests/keras_zoo/export_keras_zoo.py      # writes tests/keras_zoo/*.onnx

The .onnx files are not tracked (.gitignore); tests/test_keras_zoo.py skips without them.
Weights are Keras' random initialisation with BatchNorm statistics, BN affines and Dense
biases randomised too (seeded), at 64x64 inputs with 10 classes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
import keras  # noqa: E402

FOLDER = Path(__file__).resolve().parent
SIZE, CLASSES, OPSET = 64, 10, 17
APPLICATIONS = {
    "keras_resnet50": lambda: keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), classes=CLASSES),
    "keras_mobilenet_v2": lambda: keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3),
                                                                 classes=CLASSES, alpha=0.35),
}
# EfficientNetB0 is left out: tf2onnx 1.17 turns the state of its input Normalization layer (mean and
# variance variables of Keras 3) into extra graph inputs, so the export is not a single-input classifier.


def randomise(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                               rng.uniform(-0.2, 0.2, beta.shape).astype(np.float32),
                               rng.uniform(-0.2, 0.2, mean.shape).astype(np.float32),
                               rng.uniform(0.5, 1.5, variance.shape).astype(np.float32)])
        elif isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.uniform(-0.2, 0.2, bias.shape).astype(np.float32)])


def export(name: str, folder: Path) -> Path:
    keras.utils.set_random_seed(0)
    model = APPLICATIONS[name]()
    randomise(model)
    spec = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def forward(x):
        return model(x, training=False)

    path = folder / f"{name}.onnx"
    tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET, output_path=str(path))
    return path


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else FOLDER
    for name in APPLICATIONS:
        print(f"wrote {export(name, folder)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
