"""What the reliability drivers share: a tiny dataset and model, running `kiln`, reading its
checkpoint log, checking published checkpoints on their own (h5py), and printing figures.

Each driver is one ctest test (label `reliability`) run as

    /usr/bin/python3 tests/reliability/<driver>.py --kiln build/kiln [--long]

and prints one line that starts with "reliability: " and gives its counts. The default counts
keep the whole suite within about ten minutes on 2 cores (CI); --long, or KILN_RELIABILITY_LONG=1
in the environment, runs the full counts the README's reliability section reports.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import h5py
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMP_INFIX = ".tmp-"  # kiln's temporaries: ".<name>.tmp-<pid>-<16 hex>" (src/io/atomic_h5.cpp)


def parse_args(description, default_count, long_count, extra=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--kiln", default=os.path.join(REPO, "build", "kiln"), help="the kiln binary")
    p.add_argument("--long", action="store_true", help="the full counts (also KILN_RELIABILITY_LONG=1)")
    p.add_argument("--count", type=int, help="override the number of trials")
    p.add_argument("--seed", type=int, default=1, help="the random choices of the driver")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    if extra:
        extra(p)
    args = p.parse_args()
    if os.environ.get("KILN_RELIABILITY_LONG") == "1":
        args.long = True
    if args.count is None:
        args.count = long_count if args.long else default_count
    if not os.access(args.kiln, os.X_OK):
        sys.exit(f"{args.kiln}: not an executable kiln binary (build it, or pass --kiln)")
    return args


class Workdir:
    """A fresh directory, removed at the end unless asked to keep it."""

    def __init__(self, keep=False):
        self.path = tempfile.mkdtemp(prefix="kiln-reliability-")
        self.keep = keep

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        if self.keep:
            print(f"kept {self.path}")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def make_dataset(directory, n_train=2048, n_test=256, features=20, classes=4, seed=0):
    """x_train.npy, y_train.npy, x_test.npy, y_test.npy: the class is the argmax of the first
    `classes` features, so a small MLP learns it."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.standard_normal((n, features)).astype(np.float32)
        y = np.argmax(x[:, :classes], axis=1).astype(np.int64)
        np.save(os.path.join(directory, f"x_{split}.npy"), x)
        np.save(os.path.join(directory, f"y_{split}.npy"), y)
    return directory


def make_model_json(path, features=20, hidden=(64, 32), classes=4, dropout=0.2):
    """A Keras 3 Sequential description: Dense layers with a Dropout (so the dropout RNG matters
    for exact resume)."""
    layers = [{"class_name": "InputLayer",
               "config": {"name": "input_layer", "batch_shape": [None, features]}}]
    for i, units in enumerate(hidden):
        layers.append({"class_name": "Dense",
                       "config": {"name": f"dense_{i}", "units": units, "activation": "relu"}})
        if i == 0 and dropout:
            layers.append({"class_name": "Dropout", "config": {"name": "dropout", "rate": dropout}})
    layers.append({"class_name": "Dense",
                   "config": {"name": "output", "units": classes, "activation": "softmax"}})
    with open(path, "w") as f:
        json.dump({"class_name": "Sequential", "config": {"name": "tiny", "layers": layers}}, f)
    return path


def kiln_env(log=None, faults=None, extra=None):
    env = dict(os.environ)
    env.pop("KILN_CHECKPOINT_FAULT", None)
    env.pop("KILN_CHECKPOINT_LOG", None)
    env.pop("KILN_INJECT_NAN", None)
    env.setdefault("KILN_NUM_THREADS", "1")
    if log:
        env["KILN_CHECKPOINT_LOG"] = log
    if faults:
        env["KILN_CHECKPOINT_FAULT"] = faults
    if extra:
        env.update(extra)
    return env


def fit_command(kiln, data, model, *flags, verbose=0):
    return [kiln, "fit", "--device", "cpu", "--data", data, "--model", model, "--verbose",
            str(verbose), *flags]


def run(command, env=None, timeout=120, cwd=None):
    """Runs to the end; returns (exit code, stdout, stderr, seconds)."""
    start = time.monotonic()
    p = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - start


LOG_LINE = re.compile(r"^(submitted|written) (.*) epoch=(\d+) batch=(\d+) step=(\d+) "
                      r"weights_crc32=([0-9a-f]{8})$")


def read_log(path, start=0):
    """The checkpoint log's lines (src/checkpoint_writer.h) from byte `start` on, as dicts: event,
    path, epoch, batch, step, crc; and the byte offset after the last whole line, to start the
    next read from (a driver that reads a growing log after every run reads only what is new)."""
    out = []
    if not os.path.exists(path):
        return out, start
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode().splitlines():
        m = LOG_LINE.match(line)
        if m:
            out.append({"event": m[1], "path": m[2], "epoch": int(m[3]), "batch": int(m[4]),
                        "step": int(m[5]), "crc": int(m[6], 16)})
    return out, start + end


def temporaries(directory):
    return [p for p in glob.glob(os.path.join(directory, ".*")) if TEMP_INFIX in p]


def temporary_pid(path):
    m = re.search(re.escape(TEMP_INFIX) + r"(\d+)-[0-9a-f]{16}$", os.path.basename(path))
    return int(m[1]) if m else None


def inspect(kiln, path):
    """`kiln inspect`: loads the file and verifies every checksum; (ok, output)."""
    code, out, err, _ = run([kiln, "inspect", path], env=kiln_env(), timeout=60)
    return code == 0, out + err


def file_state(path):
    """Read with h5py alone (not kiln): the kiln group's counters and the CRC-32 of the weights,
    layer by layer in the file's order (kiln's weights_crc32, kiln/checkpoint.h), and whether
    every weight is finite."""
    with h5py.File(path, "r") as f:
        k = f["kiln"].attrs
        state = {"epoch": int(k["epoch"]), "batch": int(k["batch"]), "step": int(k["step"])}
        crc = 0
        finite = True
        weights = f["model_weights"]
        for layer in weights.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            group = weights[layer]
            for name in group.attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else name
                values = np.asarray(group[name][()], dtype="<f4")
                crc = zlib.crc32(values.tobytes(), crc)
                finite = finite and bool(np.all(np.isfinite(values)))
        state["crc"] = crc
        state["finite"] = finite
        return state


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def report(line, failures):
    """Prints the figure line, then each failure; the exit status says whether any failed."""
    print("reliability: " + line, flush=True)
    for f in failures[:20]:
        print("  FAILED: " + f)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20} more")
    sys.exit(1 if failures else 0)
