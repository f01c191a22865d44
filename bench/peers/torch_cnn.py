#!/usr/bin/env python3
"""The PyTorch peer of kiln's convnet preset (`kiln fit --model cnn`), timed as kiln times itself.

The recipe is Keras's "Simple MNIST convnet" (keras-io examples/vision/mnist_convnet.py) on
Fashion-MNIST as 28x28x1 images:

    Conv2D(32, 3, relu) -> MaxPooling2D(2) -> Conv2D(64, 3, relu) -> MaxPooling2D(2) -> Flatten
    -> Dropout(0.5) -> Dense(10, softmax); glorot_uniform kernels, zero biases; 34,826 parameters
    compile(Adam(), sparse_categorical_crossentropy, metrics=[accuracy])
    fit(x, y, batch_size=128, validation_split=0.1, shuffle=True)   (pass --batch-size 128)

Everything but the model is bench/peers/torch_mlp.py's: the data, Keras's validation split and
Adam defaults, the timing, the modes (eager, fused, compile, graph) and the JSON result; see its
docstring. Its runners build their model with torch_mlp.build_model(), which main() below
points at the convnet before it hands over to torch_mlp.main(). What differs for a convnet:
- the images go through channels-last (NHWC) memory, the layout kiln and Keras use, and on CUDA
  cudnn.benchmark picks each convolution's algorithm (the performance notes' peer settings);
- validation runs in eval mode, so Dropout is off there, as in Keras (and in graph mode the
  validation graphs are captured in eval mode);
- PyTorch flattens NCHW feature maps as (c, h, w) where Keras flattens (h, w, c): a different
  order of the same 1,600 features into the Dense layer, which changes nothing the benchmark
  measures.

    bench/peers/torch_cnn.py --device cpu --batch-size 128 --epochs 3 --warmup-epochs 1
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mlp as base  # noqa: E402  (the shared loop, beside this file)


def build_model(args=None):
    model = torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 28, 28)),
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.5),
        torch.nn.Linear(1600, 10),
    )
    # Keras's glorot_uniform: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)), where a
    # convolution's fans are its channels times the kernel's area; zero biases.
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                weight = layer.weight
                receptive = weight[0][0].numel() if weight.dim() > 2 else 1
                fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                weight.uniform_(-limit, limit)
                layer.bias.zero_()
    return model.to(memory_format=torch.channels_last)


class Validating:
    """Validation in eval mode (Dropout off), training in train mode."""

    def validate(self):
        self.model.eval()
        try:
            super().validate()
        finally:
            self.model.train()


class EagerRunner(Validating, base.EagerRunner):
    pass


class FusedRunner(Validating, base.FusedRunner):
    pass


class CompileRunner(Validating, base.CompileRunner):
    pass


class GraphRunner(Validating, base.GraphRunner):
    def capture(self, batch_size, body, train):
        # Dropout is recorded into the graph as it is at capture time.
        self.model.train(train)
        try:
            return super().capture(batch_size, body, train)
        finally:
            self.model.train()


def main(argv):
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    base.build_model = build_model
    base.RUNNERS = {"eager": EagerRunner, "fused": FusedRunner, "compile": CompileRunner,
                    "graph": GraphRunner}
    return base.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
