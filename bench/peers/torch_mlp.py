#!/usr/bin/env python3
"""The PyTorch peer of kiln's default recipe, timed the way kiln times itself.

The recipe is the one a Keras user writes for Fashion-MNIST:

    Dense(256, relu) -> Dense(128, relu) -> Dense(10, softmax), glorot_uniform weights, zero biases
    compile(Adam(), sparse_categorical_crossentropy, metrics=[accuracy])
    fit(x, y, epochs=N, batch_size=32, validation_split=0.1, shuffle=True)

Where PyTorch and Keras differ in a way that matters, this file follows Keras:
- validation_split takes the LAST 10% of the training arrays before any shuffling; split_at is
  floor(n * (1 - split)) as in Keras's train_validation_split (54,000 / 6,000 for Fashion-MNIST);
- the 54,000 training samples are shuffled every epoch and the last partial batch (16) is kept;
- Adam uses Keras's defaults: lr 1e-3, betas 0.9 / 0.999, epsilon 1e-7;
- each epoch ends with a validation pass (batch 32, no gradients) whose loss is the mean over
  samples, as Keras reports val_loss.
Two differences are left on purpose, both far below what a benchmark can see: Keras adds epsilon
to sqrt(v) and PyTorch to the bias-corrected sqrt(v / (1 - beta2^t)), and Keras clips softmax
probabilities to [1e-7, 1 - 1e-7] where cross-entropy on logits needs no clip.

Modes:
  eager    the plain loop, the data resident on the device as tensors, Adam(foreach=True)
  fused    the same with Adam(fused=True) (CUDA)
  compile  torch.compile(mode="reduce-overhead") of forward + loss, whose backward AOTAutograd
           compiles with it (PyTorch 2.x); the fused Adam step stays eager
  graph    one CUDA graph per step shape, captured by hand: the batch is gathered on the device by
           index from the resident data, then forward, backward and a capturable Adam step
Float32 with TF32 off everywhere, as kiln runs; --dtype bf16 runs forward and backward under
bf16 autocast (float32 weights and Adam, as performance.md defines bf16).

For bench/suite.py, which runs it case by case beside `kiln bench`: --hidden sets the MLP's
hidden layers (M3: 2048,2048,2048), --max-samples takes the first N training samples, each
epoch's validation pass is timed apart (with --split-validation the device is synchronised first,
so that on CUDA the split is the device's), and --checkpoint PATH saves the model and optimizer
state with torch.save at every epoch's end, inside the epoch's time (K1).

Epoch time = all training steps of the epoch plus its validation pass, from the host clock after
a device synchronisation to the host clock after the epoch's figures reached the host.
samples_per_s = training samples per epoch / median epoch time.

Runs on PyTorch 1.13 (CPU, eager) and 2.x (all modes); features that 1.13 lacks are guarded.
"""

import argparse
import gzip
import inspect
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
VALIDATION_SPLIT = 0.1

# Keras's Adam defaults (keras.optimizers.Adam).
LEARNING_RATE = 1e-3
BETAS = (0.9, 0.999)
EPSILON = 1e-7


# ---- data ----------------------------------------------------------------------------------------

def read_idx(path):
    """Reads one IDX file (gzipped or not) of unsigned bytes into an array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    # each dimension as a big-endian uint32.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != math.prod(dims):
        raise ValueError(f"{path}: header declares {dims} ({math.prod(dims)} bytes), "
                         f"file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")


def load_training_set(data_dir):
    """Fashion-MNIST's 60,000 training samples: x float32 in [0, 1], (n, 784); y int64, (n,)."""
    images = read_idx(find_idx(data_dir, "train-images-idx3-ubyte"))
    labels = read_idx(find_idx(data_dir, "train-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    y = labels.astype(np.int64)
    return x, y


# ---- model and optimizer -------------------------------------------------------------------------

def build_model(args):
    widths = [784] + args.hidden + [10]
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])  # no ReLU after the logits
    # Keras's glorot_uniform: U(-limit, limit), limit = sqrt(6 / (fan_in + fan_out)); zero biases.
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                limit = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                layer.weight.uniform_(-limit, limit)
                layer.bias.zero_()
    return model


class Autocast(torch.nn.Module):
    """Runs the wrapped model under bf16 autocast and hands float32 logits to the loss.

    The autocast cache is off, so that a captured CUDA graph does not keep casts of weights
    the optimizer has since changed.
    """

    def __init__(self, model, device_type):
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=False):
            return self.model(x).float()


def make_adam(params, **wanted):
    """Adam with Keras's defaults, plus those of `wanted` (fused, capturable) this PyTorch has."""
    accepted = inspect.signature(torch.optim.Adam.__init__).parameters
    missing = [k for k in wanted if k not in accepted]
    if missing:
        raise RuntimeError(f"torch {torch.__version__}: Adam has no {', '.join(missing)}")
    return torch.optim.Adam(params, lr=LEARNING_RATE, betas=BETAS, eps=EPSILON, **wanted)


# ---- the training loops --------------------------------------------------------------------------

class Runner:
    """Holds the data, the model, the optimizer and the epoch's accumulators on one device.

    Each mode provides train_batch(idx) for one step on the training rows `idx` and validate().
    Loss sums and correct counts are added up on the device; nothing in a step waits for the host.
    """

    def __init__(self, args, x, y):
        self.device = torch.device(args.device)
        self.batch_size = args.batch_size
        split_at = int(math.floor(x.shape[0] * (1.0 - VALIDATION_SPLIT)))
        to_dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        self.x_train, self.y_train = to_dev(x[:split_at]), to_dev(y[:split_at])
        self.x_val, self.y_val = to_dev(x[split_at:]), to_dev(y[split_at:])
        self.n_train, self.n_val = split_at, x.shape[0] - split_at

        torch.manual_seed(args.seed)
        self.model = build_model(args).to(self.device)
        if args.dtype == "bf16":
            self.model = Autocast(self.model, self.device.type)
        self.split_validation = args.split_validation
        self.validation_s = 0.0  # the last epoch's validation pass, its figures' read included
        self.shuffle_rng = torch.Generator(device=self.device)
        self.shuffle_rng.manual_seed(args.seed)

        zeros = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)
        self.loss_sum, self.correct = zeros(torch.float64), zeros(torch.int64)
        self.val_loss_sum, self.val_correct = zeros(torch.float64), zeros(torch.int64)
        self.val_rows = torch.arange(self.n_val, device=self.device)

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def batches(self, n):
        for start in range(0, n, self.batch_size):
            yield start, min(start + self.batch_size, n)

    def run_epoch(self):
        """One epoch: shuffled training steps, then validation. Returns the epoch's figures."""
        for acc in (self.loss_sum, self.correct, self.val_loss_sum, self.val_correct):
            acc.zero_()
        order = torch.randperm(self.n_train, generator=self.shuffle_rng, device=self.device)
        for start, stop in self.batches(self.n_train):
            self.train_batch(order[start:stop])
        if self.split_validation:
            self.synchronize()
        validation_start = time.perf_counter()
        self.validate()
        # The one host synchronisation of the epoch: four scalars come back.
        figures = torch.stack([self.loss_sum, self.correct.double(),
                               self.val_loss_sum, self.val_correct.double()]).tolist()
        self.validation_s = time.perf_counter() - validation_start
        return {"loss": figures[0] / self.n_train, "accuracy": figures[1] / self.n_train,
                "val_loss": figures[2] / self.n_val, "val_accuracy": figures[3] / self.n_val}

    # The plain step and validation, shared by eager mode and by graph mode's warm-up.
    def eager_train_batch(self, idx):
        xb, yb = self.x_train.index_select(0, idx), self.y_train.index_select(0, idx)
        logits = self.model(xb)
        loss = F.cross_entropy(logits, yb)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach() * yb.shape[0])
            self.correct.add_((logits.argmax(dim=1) == yb).sum())

    @torch.no_grad()
    def eager_validate_batch(self, idx):
        xb, yb = self.x_val.index_select(0, idx), self.y_val.index_select(0, idx)
        logits = self.model(xb)
        self.val_loss_sum.add_(F.cross_entropy(logits, yb, reduction="sum"))
        self.val_correct.add_((logits.argmax(dim=1) == yb).sum())

    def validate(self):
        for start, stop in self.batches(self.n_val):
            self.validate_batch(self.val_rows[start:stop])


class EagerRunner(Runner):
    """Adam's multi-tensor (foreach) update: a few kernels for all parameters together."""

    adam_options = {"foreach": True}

    def __init__(self, args, x, y):
        super().__init__(args, x, y)
        self.optimizer = make_adam(self.model.parameters(), **self.adam_options)
        self.train_batch = self.eager_train_batch
        self.validate_batch = self.eager_validate_batch


class FusedRunner(EagerRunner):
    """The fused kernel updates every parameter in one launch; CUDA-only on torch < 2.4."""

    adam_options = {"fused": True}

    def __init__(self, args, x, y):
        if args.device != "cuda":
            raise RuntimeError("--mode fused needs --device cuda")
        super().__init__(args, x, y)


class CompileRunner(Runner):
    """Forward and loss through torch.compile(mode="reduce-overhead"): Inductor's fused kernels,
    replayed as CUDA graphs (one per batch shape, training and validation apart)."""

    def __init__(self, args, x, y):
        super().__init__(args, x, y)
        if not hasattr(torch, "compile"):
            raise RuntimeError(f"torch {torch.__version__} has no torch.compile (needs 2.0+)")
        extra = {"fused": True} if self.device.type == "cuda" else {}
        self.optimizer = make_adam(self.model.parameters(), **extra)
        model = self.model

        def train_forward(xb, yb):
            logits = model(xb)
            return F.cross_entropy(logits, yb), (logits.argmax(dim=1) == yb).sum()

        def val_forward(xb, yb):
            logits = model(xb)
            return (F.cross_entropy(logits, yb, reduction="sum"),
                    (logits.argmax(dim=1) == yb).sum())

        # dynamic=False: the full and the last partial batch each get a graph of their own
        # rather than one shape-generic kernel set.
        self.train_forward = torch.compile(train_forward, mode="reduce-overhead", dynamic=False)
        self.val_forward = torch.compile(val_forward, mode="reduce-overhead", dynamic=False)
        # Tells the CUDA-graph trees that a new iteration starts, so that the previous one's
        # outputs may be overwritten (they are consumed before the next call).
        compiler = getattr(torch, "compiler", None)
        self.mark_step = getattr(compiler, "cudagraph_mark_step_begin", lambda: None)

    def train_batch(self, idx):
        xb, yb = self.x_train.index_select(0, idx), self.y_train.index_select(0, idx)
        # Drop the last step's gradients (outputs of the backward graph) before the next replay
        # may reuse their memory.
        self.optimizer.zero_grad(set_to_none=True)
        self.mark_step()
        loss, correct = self.train_forward(xb, yb)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach() * yb.shape[0])
            self.correct.add_(correct)

    @torch.no_grad()
    def validate_batch(self, idx):
        xb, yb = self.x_val.index_select(0, idx), self.y_val.index_select(0, idx)
        self.mark_step()
        loss_sum, correct = self.val_forward(xb, yb)
        self.val_loss_sum.add_(loss_sum)
        self.val_correct.add_(correct)


class GraphRunner(Runner):
    """Each step is one replay of a CUDA graph captured by hand.

    A graph reads its batch's row numbers from a static index buffer, gathers the rows from the
    resident data, runs forward, loss, backward and a capturable Adam step, and adds to the epoch's
    accumulators. One graph per distinct batch size (32 and the last, partial, 16) and the same
    for validation. Per step the host copies the row numbers into the index buffer and replays.
    """

    def __init__(self, args, x, y):
        super().__init__(args, x, y)
        if self.device.type != "cuda":
            raise RuntimeError("--mode graph needs --device cuda")
        self.optimizer = make_adam(self.model.parameters(), capturable=True)
        params = list(self.model.parameters())
        initial = [p.detach().clone() for p in params]

        # Capture a graph for every batch size an epoch will see.
        sizes = lambda n: sorted({stop - start for start, stop in self.batches(n)})
        self.train_graphs = {bs: self.capture(bs, self.eager_train_batch, train=True)
                             for bs in sizes(self.n_train)}
        self.val_graphs = {bs: self.capture(bs, self.eager_validate_batch, train=False)
                           for bs in sizes(self.n_val)}

        # The warm-up steps before each capture trained the model a little: put back the initial
        # weights and a fresh Adam state (in place, so that the graphs' pointers stay valid).
        with torch.no_grad():
            for p, p0 in zip(params, initial):
                p.copy_(p0)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    def capture(self, batch_size, body, train):
        """Captures `body` over a static index buffer of `batch_size` rows."""
        idx = torch.arange(batch_size, device=self.device)
        # Warm up on a side stream, as PyTorch asks: creates the Adam state, the cuBLAS handles
        # and workspaces, so that the capture allocates nothing lazily.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                body(idx)
        torch.cuda.current_stream().wait_stream(side)

        graph = torch.cuda.CUDAGraph()
        if train:
            # Gradients are allocated inside the capture, in the graph's private pool; every
            # replay rewrites them. Keep them alive after the next capture sets them to None.
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                xb, yb = self.x_train.index_select(0, idx), self.y_train.index_select(0, idx)
                logits = self.model(xb)
                loss = F.cross_entropy(logits, yb)
                loss.backward()
                self.optimizer.step()
                with torch.no_grad():
                    self.loss_sum.add_(loss.detach() * batch_size)
                    self.correct.add_((logits.argmax(dim=1) == yb).sum())
            kept = [p.grad for p in self.model.parameters()]
        else:
            with torch.cuda.graph(graph):
                body(idx)
            kept = []
        return graph, idx, kept

    def train_batch(self, idx):
        graph, static_idx, _ = self.train_graphs[idx.shape[0]]
        static_idx.copy_(idx)
        graph.replay()

    def validate_batch(self, idx):
        graph, static_idx, _ = self.val_graphs[idx.shape[0]]
        static_idx.copy_(idx)
        graph.replay()


RUNNERS = {"eager": EagerRunner, "fused": FusedRunner, "compile": CompileRunner,
           "graph": GraphRunner}


# ---- main ----------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--mode", choices=sorted(RUNNERS), default="eager")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs")
    p.add_argument("--warmup-epochs", type=int, default=1,
                   help="epochs run first and not timed (they still train the model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="CPU threads for --device cpu (default: all cores)")
    p.add_argument("--data", default=os.environ.get("KILN_FASHION_MNIST_DIR", DEFAULT_DATA_DIR),
                   help="folder with the Fashion-MNIST IDX files "
                        "(default: $KILN_FASHION_MNIST_DIR or %(default)s)")
    p.add_argument("--max-samples", type=int, default=0,
                   help="train on the first N training samples only (0: all)")
    p.add_argument("--hidden", default="256,128",
                   help="the MLP's hidden widths, comma-separated (default: %(default)s)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 (TF32 off), or bf16 autocast over float32 weights")
    p.add_argument("--split-validation", action="store_true",
                   help="synchronise the device before each validation pass, so that its time "
                        "is the device's (only matters on CUDA)")
    p.add_argument("--checkpoint", help="torch.save the model and optimizer state here at every "
                                        "epoch's end, inside the epoch's time")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.warmup_epochs < 0 or args.batch_size < 1 or args.threads < 1:
        p.error("need --epochs >= 1, --warmup-epochs >= 0, --batch-size >= 1, --threads >= 1")
    if args.max_samples < 0:
        p.error("need --max-samples >= 0")
    args.hidden = [int(w) for w in args.hidden.split(",") if w]
    return args


def main(argv):
    args = parse_args(argv)

    # Float32 throughout: no TF32 in matrix products or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch, "set_float32_matmul_precision"):
        torch.set_float32_matmul_precision("highest")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("torch_mlp: --device cuda but torch.cuda.is_available() is False",
                  file=sys.stderr)
            return 2
        device_name = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        torch.set_num_threads(args.threads)
        device_name = "cpu"

    x, y = load_training_set(args.data)
    if args.max_samples:
        x, y = x[:args.max_samples], y[:args.max_samples]
    setup_start = time.perf_counter()
    try:
        runner = RUNNERS[args.mode](args, x, y)
    except RuntimeError as e:
        print(f"torch_mlp: {e}", file=sys.stderr)
        return 2
    runner.synchronize()
    setup_s = time.perf_counter() - setup_start
    print(f"torch {torch.__version__} - {args.mode} on {device_name} - "
          f"{torch.get_num_threads()} threads - batch {args.batch_size} - "
          f"{runner.n_train} train / {runner.n_val} validation samples - setup {setup_s:.2f}s",
          flush=True)

    # Warm-up epochs first (module loading, compilation, autotuning), then the timed ones.
    total = args.warmup_epochs + args.epochs
    times, validation_times, figures = [], [], {}
    for epoch in range(total):
        runner.synchronize()
        start = time.perf_counter()
        figures = runner.run_epoch()
        if args.checkpoint:
            torch.save({"model": runner.model.state_dict(),
                        "optimizer": runner.optimizer.state_dict()}, args.checkpoint)
        elapsed = time.perf_counter() - start
        warm = epoch < args.warmup_epochs
        if not warm:
            times.append(elapsed)
            validation_times.append(runner.validation_s)
        print(f"Epoch {epoch + 1}/{total}{' (warm-up, not timed)' if warm else ''} - "
              f"{elapsed:.3f}s - loss: {figures['loss']:.4f} - "
              f"accuracy: {figures['accuracy']:.4f} - val_loss: {figures['val_loss']:.4f} - "
              f"val_accuracy: {figures['val_accuracy']:.4f}", flush=True)

    median = statistics.median(times)
    result = {
        "engine": "pytorch",
        "mode": args.mode,
        "torch_version": torch.__version__,
        "device": device_name,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "epoch_times_s": times,
        "median_epoch_s": median,
        "validation_times_s": validation_times,
        "validation_synchronised": args.split_validation or args.device == "cpu",
        "checkpoint": args.checkpoint,
        "dtype": args.dtype,
        "samples_per_s": runner.n_train / median,
        "val_loss": figures["val_loss"],
        "val_accuracy": figures["val_accuracy"],
        "loss": figures["loss"],
        "accuracy": figures["accuracy"],
        "epochs": args.epochs,
        "warmup_epochs": args.warmup_epochs,
        "train_samples": runner.n_train,
        "val_samples": runner.n_val,
        "setup_s": setup_s,
        "seed": args.seed,
        "tf32": False,
    }
    print(f"median epoch {median:.3f}s - {result['samples_per_s']:.0f} samples/s")
    if args.json:
        write_json(args.json, result)
    return 0


def write_json(path, result):
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
