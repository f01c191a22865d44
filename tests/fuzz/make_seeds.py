#!/usr/bin/python3
"""Writes the seed corpora of kiln's fuzz targets into tests/fuzz/corpus/<target>/.

Usage: /usr/bin/python3 tests/fuzz/make_seeds.py

Every seed is a small file of the kind its loader reads (a few KiB at most), written with numpy
and h5py the way numpy, h5py, Keras and kiln write them, so that fuzzing starts from inputs that
reach deep into each parser. Seeds named `valid-*` are well-formed: the replay test
(tests/fuzz_replay_test.cpp) checks that their loader accepts them, so a change to a format that
leaves a seed behind is noticed. Seeds named `edge-*` are legal files that kiln refuses (an
unsupported dtype, a structured array) or corner cases; the loader must only return a Status.

The checkpoints in kiln's own layout (its `kiln` group, checksums and all) are written here with
h5py, mirroring src/io/checkpoint_h5.cpp: a file from kiln's writer is about 17 KiB, over the
size a seed should have.

The results are committed; run this again only to change the seeds.
"""

import argparse
import ctypes
import gzip
import io
import json
import os
import struct
import sys
import zlib

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
MAX_SEED_BYTES = 16 * 1024


def out_dir(target):
    path = os.path.join(CORPUS, target)
    os.makedirs(path, exist_ok=True)
    return path


def write_bytes(target, name, data):
    with open(os.path.join(out_dir(target), name), "wb") as f:
        f.write(data)


# ---- IDX ----------------------------------------------------------------------------------------

IDX_TYPES = {"u8": (0x08, ">u1"), "i8": (0x09, ">i1"), "i16": (0x0B, ">i2"), "i32": (0x0C, ">i4"),
             "f32": (0x0D, ">f4"), "f64": (0x0E, ">f8")}


def idx_bytes(array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def make_idx():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 4, 4)).astype(">u1")
    labels = np.array([1, 0, 7], dtype=">u1")
    write_bytes("idx", "valid-images-u8.idx", idx_bytes(images, 0x08))
    write_bytes("idx", "valid-labels-u8.idx", idx_bytes(labels, 0x08))
    for name, (code, dtype) in IDX_TYPES.items():
        if name == "u8":
            continue
        values = (rng.standard_normal((2, 3)) * 100).astype(dtype)
        write_bytes("idx", "valid-%s.idx" % name, idx_bytes(values, code))
    write_bytes("idx", "valid-empty.idx", idx_bytes(np.zeros((0, 4), dtype=">u1"), 0x08))
    # gzip, as the MNIST files are distributed (mtime 0: the same bytes on every run)
    write_bytes("idx", "valid-images-u8.idx.gz",
                gzip.compress(idx_bytes(images, 0x08), mtime=0))
    write_bytes("idx", "valid-labels-u8.idx.gz",
                gzip.compress(idx_bytes(labels, 0x08), mtime=0))


# ---- NPY ----------------------------------------------------------------------------------------

def npy_bytes(array, version=None):
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array)
    else:
        np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def make_npy():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3, 4)) * 10
    for dtype in ["|u1", "|i1", "|b1", "<i2", "<i4", "<i8", "<u2", "<u4", "<u8", "<f4", "<f8"]:
        array = (base > 0) if dtype == "|b1" else base.astype(dtype)
        tag = dtype[1:]
        write_bytes("npy", "valid-%s.npy" % tag, npy_bytes(np.ascontiguousarray(array)))
    write_bytes("npy", "valid-1d.npy", npy_bytes(np.arange(5, dtype="<f4")))
    write_bytes("npy", "valid-images-3d.npy",
                npy_bytes(rng.integers(0, 256, size=(2, 3, 3)).astype("|u1")))
    write_bytes("npy", "valid-empty.npy", npy_bytes(np.zeros((0, 3), dtype="<f4")))
    write_bytes("npy", "valid-v2.npy", npy_bytes(base.astype("<f4"), version=(2, 0)))
    write_bytes("npy", "valid-v3.npy", npy_bytes(base.astype("<f4"), version=(3, 0)))
    # Refused by kiln, legal for numpy.
    write_bytes("npy", "edge-fortran.npy", npy_bytes(np.asfortranarray(base.astype("<f4"))))
    write_bytes("npy", "edge-big-endian.npy", npy_bytes(base.astype(">f4")))
    write_bytes("npy", "edge-scalar.npy", npy_bytes(np.float32(1.5)))
    write_bytes("npy", "edge-structured.npy",
                npy_bytes(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])))
    write_bytes("npy", "edge-float16.npy", npy_bytes(base.astype("<f2")))


# ---- CSV ----------------------------------------------------------------------------------------

def make_csv():
    seeds = {
        "valid-header.csv": "label,a,b,c\n1,0.5,2,-3\n0,1e-3,4.25,7\n2,+1,0,1E2\n",
        "valid-no-header.csv": "3,0,255,128\n1,12,0,9\n",
        "valid-label-last.csv": "x0,x1,label\n0.1,0.2,1\n0.3,0.4,0\n",
        "valid-crlf-bom.csv": "\ufefflabel,p1,p2\r\n1,2,3\r\n4,5,6\r\n",
        "valid-quoted-header.csv": '"label","pixel ""1""",\'p2\'\n1,2,3\n',
        "valid-blank-lines.csv": "label,a\n\n1,2\n   \n3,4\n",
        "valid-pandas-index.csv": ",label,a\n0,1,2.5\n1,0,3.5\n",
        # one column with ',' (the default, so not valid-*); the target's ';' options read it
        "edge-semicolon.csv": "label;a;b\n1;2;3\n",
        "edge-ragged.csv": "label,a,b\n1,2\n",
        "edge-nan.csv": "label,a\n1,nan\n",
        "edge-unterminated.csv": 'label,"a\n1,2\n',
    }
    for name, text in seeds.items():
        write_bytes("csv", name, text.encode("utf-8"))


# ---- HDF5 datasets ------------------------------------------------------------------------------

def _libhdf5():
    """The libhdf5 h5py is linked against, for the two settings h5py does not expose."""
    for name in ["libhdf5_serial.so.103", "libhdf5.so"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    return None


def h5_file(target, name, build, libver="latest"):
    path = os.path.join(out_dir(target), name)
    if os.path.exists(path):
        os.remove(path)
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    bound = h5py.h5f.LIBVER_LATEST if libver == "latest" else h5py.h5f.LIBVER_EARLIEST
    fapl.set_libver_bounds(bound, h5py.h5f.LIBVER_LATEST)
    lib = _libhdf5()
    if lib is not None:
        # HDF5 reserves metadata and small raw data in 2 KiB blocks by default; seeds stay
        # smaller with 256-byte ones.
        lib.H5Pset_meta_block_size(ctypes.c_int64(fapl.id), ctypes.c_uint64(256))
        lib.H5Pset_small_data_block_size(ctypes.c_int64(fapl.id), ctypes.c_uint64(256))
    fid = h5py.h5f.create(path.encode(), h5py.h5f.ACC_TRUNC, fapl=fapl)
    with h5py.File(fid) as f:
        build(f)


def dataset(f, name, data, **kwargs):
    return f.create_dataset(name, data=data, track_times=False, **kwargs)


def group(parent, name):
    """parent.create_group(name), without timestamps (h5py's create_group always sets them)."""
    gcpl = h5py.h5p.create(h5py.h5p.GROUP_CREATE)
    gcpl.set_obj_track_times(False)
    return h5py.Group(h5py.h5g.create(parent.id, name.encode(), gcpl=gcpl))


def make_hdf5():
    rng = np.random.default_rng(3)

    def mnist_like(f):
        dataset(f, "x_train", rng.integers(0, 256, size=(4, 3, 3)).astype("u1"))
        dataset(f, "y_train", np.array([0, 1, 2, 1], dtype="u1"))
        dataset(f, "x_test", rng.integers(0, 256, size=(2, 3, 3)).astype("u1"))
        dataset(f, "y_test", np.array([2, 0], dtype="u1"))

    def dtypes(f):
        base = rng.standard_normal((2, 3)) * 100
        for dtype in ["<f4", "<f8", ">f4", "<i2", "<i4", ">i8", "<u2", "<u4", "i1", "<f2"]:
            dataset(f, "a_" + dtype.replace("<", "le_").replace(">", "be_"), base.astype(dtype))

    def chunked(f):
        data = rng.standard_normal((8, 4)).astype("<f4")
        dataset(f, "gzip", data, chunks=(4, 4), compression="gzip", shuffle=True)
        dataset(f, "fletcher", data, chunks=(2, 4), fletcher32=True)
        # chunked, never written: the fill value
        f.create_dataset("unwritten", shape=(6,), dtype="<f4", chunks=(3,), fillvalue=2.5,
                         track_times=False)
        dataset(f, "resizable", data, chunks=(4, 4), maxshape=(None, 4))

    def shapes(f):
        dataset(f, "empty", np.zeros((0, 3), dtype="<f4"))
        dataset(f, "scalar", np.float32(4.0))
        dataset(f, "rank4", rng.standard_normal((2, 1, 2, 2)).astype("<f4"))
        dataset(f, "compact", np.arange(6, dtype="<f4"),
                dcpl=_compact_dcpl())

    def grouped(f):
        g = group(f, "data")
        dataset(g, "x_train", rng.standard_normal((3, 2)).astype("<f4"))
        dataset(g, "y_train", np.array([0, 1, 0], dtype="<i8"))
        dataset(f, "x_train", rng.standard_normal((3, 2)).astype("<f4"))
        f["alias"] = h5py.SoftLink("/x_train")
        f["outside"] = h5py.ExternalLink("other.h5", "/x")
        f["hard_alias"] = f["x_train"]

    def refused(f):
        dataset(f, "text", np.array([b"ab", b"cd"]))
        dataset(f, "compound", np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
        dataset(f, "flags", np.array([True, False]))
        f.create_dataset("null", data=h5py.Empty("f4"))

    h5_file("hdf5", "valid-mnist-like.h5", mnist_like)
    h5_file("hdf5", "valid-mnist-like-earliest.h5", mnist_like, libver="earliest")
    h5_file("hdf5", "valid-dtypes.h5", dtypes)
    h5_file("hdf5", "valid-chunked.h5", chunked)
    h5_file("hdf5", "valid-shapes.h5", shapes)
    h5_file("hdf5", "valid-grouped.h5", grouped)
    h5_file("hdf5", "edge-refused-types.h5", refused)


def _compact_dcpl():
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dcpl.set_obj_track_times(False)
    return dcpl


# ---- model descriptions -------------------------------------------------------------------------

def keras3_layer(class_name, config):
    return {"module": "keras.layers", "class_name": class_name, "config": config,
            "registered_name": None}


def keras3_model(layers, name="sequential"):
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": name, "trainable": True,
                       "dtype": {"module": "keras", "class_name": "DTypePolicy",
                                 "config": {"name": "float32"}, "registered_name": None},
                       "layers": layers},
            "registered_name": None, "keras_version": "3.15.1", "backend": "jax"}


MLP = keras3_model([
    keras3_layer("InputLayer", {"batch_shape": [None, 4], "dtype": "float32", "sparse": False,
                                "name": "input_layer"}),
    keras3_layer("Dense", {"name": "dense", "trainable": True, "units": 3, "activation": "relu",
                           "use_bias": True,
                           "kernel_initializer": {"module": "keras.initializers",
                                                  "class_name": "GlorotUniform",
                                                  "config": {"seed": None},
                                                  "registered_name": None},
                           "bias_initializer": "zeros", "kernel_regularizer": None,
                           "bias_regularizer": None, "kernel_constraint": None,
                           "bias_constraint": None}),
    keras3_layer("Dropout", {"name": "dropout", "rate": 0.25, "seed": 7, "noise_shape": None}),
    keras3_layer("Dense", {"name": "dense_1", "units": 2, "activation": "softmax"}),
])

CNN = keras3_model([
    keras3_layer("InputLayer", {"batch_shape": [None, 6, 6, 1], "name": "input"}),
    keras3_layer("Conv2D", {"name": "conv2d", "filters": 2, "kernel_size": [3, 3],
                            "strides": [1, 1], "padding": "valid", "data_format": "channels_last",
                            "dilation_rate": [1, 1], "groups": 1, "activation": "relu",
                            "use_bias": True}),
    keras3_layer("BatchNormalization", {"name": "batch_normalization", "axis": -1,
                                        "momentum": 0.99, "epsilon": 0.001, "center": True,
                                        "scale": True}),
    keras3_layer("MaxPooling2D", {"name": "max_pooling2d", "pool_size": [2, 2],
                                  "strides": [2, 2], "padding": "valid"}),
    keras3_layer("AveragePooling2D", {"name": "average_pooling2d", "pool_size": 1,
                                      "padding": "same"}),
    keras3_layer("Reshape", {"name": "reshape", "target_shape": [-1, 2]}),
    keras3_layer("Flatten", {"name": "flatten"}),
    keras3_layer("Activation", {"name": "activation", "activation": "tanh"}),
    keras3_layer("Dense", {"name": "dense", "units": 3}),
], name="cnn")

GAP = keras3_model([
    keras3_layer("InputLayer", {"batch_shape": [None, 4, 4, 2]}),
    keras3_layer("Conv2D", {"filters": 1, "kernel_size": 2, "padding": "same",
                            "use_bias": False}),
    keras3_layer("GlobalAveragePooling2D", {"keepdims": True}),
    keras3_layer("Flatten", {}),
    keras3_layer("Dense", {"units": 2, "activation": "sigmoid"}),
])

KERAS2 = {"class_name": "Sequential", "keras_version": "2.15.0", "backend": "tensorflow",
          "config": {"name": "sequential", "layers": [
              {"class_name": "InputLayer",
               "config": {"batch_input_shape": [None, 5], "dtype": "float32", "sparse": False,
                          "ragged": False, "name": "dense_input"}},
              {"class_name": "Dense",
               "config": {"name": "dense", "trainable": True, "dtype": "float32", "units": 4,
                          "activation": "tanh", "use_bias": True,
                          "kernel_initializer": {"class_name": "VarianceScaling",
                                                 "config": {"scale": 2.0, "mode": "fan_in",
                                                            "distribution": "truncated_normal",
                                                            "seed": None}},
                          "bias_initializer": {"class_name": "Zeros", "config": {}},
                          "kernel_regularizer": None, "bias_regularizer": None,
                          "activity_regularizer": None, "kernel_constraint": None,
                          "bias_constraint": None}},
              {"class_name": "Dense",
               "config": {"name": "dense_1", "units": 1, "activation": "linear",
                          "kernel_initializer": {"class_name": "RandomNormal",
                                                 "config": {"mean": 0.0, "stddev": 0.05,
                                                            "seed": 3}}}}]}}

NO_INPUT_LAYER = {"class_name": "Sequential", "config": {"layers": [
    {"class_name": "Dense", "config": {"units": 8, "input_dim": 3, "activation": "elu"}},
    {"class_name": "Dense", "config": {"units": 2, "activation": "gelu"}}]}}

OLD_BARE_LIST = {"class_name": "Sequential", "config": [
    {"class_name": "Dense", "config": {"name": "d", "units": 2,
                                       "batch_input_shape": [None, 3]}},
    {"class_name": "Activation", "config": {"activation": "leaky_relu"}}]}

BUILD_SHAPE = {"class_name": "Sequential", "config": {
    "name": "built", "build_input_shape": [None, 2, 2],
    "layers": [{"class_name": "Flatten", "config": {}},
               {"class_name": "Dense", "config": {"units": 1}}]},
    "build_config": {"input_shape": [None, 2, 2]}}


# The model of the checkpoint seeds, in as few bytes as kiln reads (a full model file stores it
# once, a kiln weights file in its `kiln` group).
CKPT_MODEL = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
    {"class_name": "InputLayer", "config": {"batch_shape": [None, 4], "name": "input_layer"}},
    {"class_name": "Dense", "config": {"name": "dense", "units": 3, "activation": "relu"}},
    {"class_name": "Dropout", "config": {"name": "dropout", "rate": 0.25}},
    {"class_name": "Dense", "config": {"name": "dense_1", "units": 2,
                                       "activation": "softmax"}}]}}


def compact_json(doc):
    return json.dumps(doc, separators=(",", ":"))


def make_model_json():
    seeds = {"valid-keras3-mlp.json": MLP, "valid-keras3-cnn.json": CNN,
             "valid-keras3-gap.json": GAP, "valid-keras2.json": KERAS2,
             "valid-no-input-layer.json": NO_INPUT_LAYER, "valid-bare-list.json": OLD_BARE_LIST,
             "valid-build-shape.json": BUILD_SHAPE}
    for name, doc in seeds.items():
        write_bytes("model_json", name, json.dumps(doc, indent=1).encode())
    edges = {
        "edge-unknown-class.json": {"class_name": "Sequential", "config": {"layers": [
            {"class_name": "LSTM", "config": {"units": 2, "input_shape": [3, 4]}}]}},
        "edge-functional.json": {"class_name": "Functional", "config": {"layers": []}},
        "edge-regularizer.json": {"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Dense", "config": {"units": 2, "input_dim": 2,
                                               "kernel_regularizer": {"class_name": "L2"}}}]}},
    }
    for name, doc in edges.items():
        write_bytes("model_json", name, json.dumps(doc).encode())
    write_bytes("model_json", "edge-truncated.json", json.dumps(MLP).encode()[:150])


# ---- checkpoints --------------------------------------------------------------------------------

def crc(array):
    """kiln's checksum: zlib.crc32 of the dataset's little-endian bytes."""
    return zlib.crc32(np.ascontiguousarray(array).tobytes())


def mlp_weights():
    rng = np.random.default_rng(4)
    return [("dense", [("kernel", rng.standard_normal((4, 3)).astype("<f4")),
                       ("bias", rng.standard_normal(3).astype("<f4"))]),
            ("dropout", []),
            ("dense_1", [("kernel", rng.standard_normal((3, 2)).astype("<f4")),
                         ("bias", rng.standard_normal(2).astype("<f4"))])]


# String attributes: fixed-length by default, which h5py stores in the object header. Variable-
# length strings, which kiln and Keras 3 write, go to a global heap collection of at least 4 KiB,
# so only the seeds that are about them use them.
STRINGS = {"vlen": False}


def text(obj, name, value):
    if STRINGS["vlen"]:
        obj.attrs.create(name, value, dtype=h5py.string_dtype())
    else:
        obj.attrs.create(name, np.bytes_(value.encode()))


def text_list(obj, name, values):
    """A list as Keras writes layer_names and weight_names; [] as h5py stores it (float64)."""
    if not values:
        obj.attrs.create(name, np.zeros((0,), dtype="f8"))
    elif STRINGS["vlen"]:
        obj.attrs.create(name, values, dtype=h5py.string_dtype())
    else:
        obj.attrs.create(name, np.array([v.encode() for v in values]))


def write_legacy_layout(f, sums):
    """The Keras legacy full-model layout (what save_model_h5 and Keras 2 write)."""
    text(f, "keras_version", "2.15.0")
    text(f, "backend", "tensorflow")
    text(f, "model_config", compact_json(CKPT_MODEL))
    text(f, "training_config", compact_json({"loss": "categorical_crossentropy"}))
    mw = group(f, "model_weights")
    layers = mlp_weights()
    text_list(mw, "layer_names", [name for name, _ in layers])
    text(mw, "backend", "tensorflow")
    text(mw, "keras_version", "2.15.0")
    for name, weights in layers:
        g = group(mw, name)
        names = ["%s/%s:0" % (name, w) for w, _ in weights]
        text_list(g, "weight_names", names)
        for n, (_, values) in zip(names, weights):
            dataset(g, n, values)
            if sums is not None:
                sums["/model_weights/%s/%s" % (name, n)] = crc(values)
    top = group(mw, "top_level_model_weights")
    text_list(top, "weight_names", [])


def write_weights_layout(f, sums):
    """The Keras 3 weights layout: /layers/<key>/vars/<i>."""
    text(group(f, "vars"), "name", "sequential")
    layers = group(f, "layers")
    for (name, weights) in mlp_weights():
        vars_group = group(group(layers, name), "vars")
        text(vars_group, "name", name)
        for i, (_, values) in enumerate(weights):
            dataset(vars_group, str(i), values)
            if sums is not None:
                sums["/layers/%s/vars/%d" % (name, i)] = crc(values)


def write_kiln_group(f, sums, kind, epochs=2):
    """kiln's resume state (src/io/checkpoint_h5.cpp), checksums over everything kiln wrote."""
    k = group(f, "kiln")
    history_epoch = np.arange(epochs, dtype="<i8")
    dataset(k, "history_epoch", history_epoch)
    sums["/kiln/history_epoch"] = crc(history_epoch)
    optimizer_state = np.linspace(-1, 1, 2 * 23, dtype="<f4").reshape(2, 23)
    dataset(k, "optimizer_state", optimizer_state)
    sums["/kiln/optimizer_state"] = crc(optimizer_state)
    history = group(k, "history")
    keys = ["loss", "accuracy"] if epochs else []
    for key in keys:
        values = np.linspace(1, 0.5, epochs).astype("<f8")
        dataset(history, key, values)
        sums["/kiln/history/" + key] = crc(values)
    text_list(history, "keys", keys)
    attrs = k.attrs
    attrs.create("format_version", 1, dtype="<i8")
    text(k, "kiln_version", "0.1.0")
    text(k, "kind", kind)
    attrs.create("resumable", 1, dtype="<i8")
    attrs.create("epoch", epochs, dtype="<i8")
    attrs.create("batch", 0, dtype="<i8")
    attrs.create("step", 8 * epochs, dtype="<i8")
    attrs.create("seed", 1, dtype="<u8")
    attrs.create("learning_rate", 0.001, dtype="<f8")
    text(k, "optimizer", "Adam")
    text(k, "callbacks_state", compact_json({"ModelCheckpoint": {"best": 0.5}}))
    text(k, "fit_args", compact_json({"epochs": 3, "batch_size": 2, "shuffle": True}))
    if kind == "weights":
        text(k, "model_config", compact_json(CKPT_MODEL))
    text(k, "checksums", compact_json({"algorithm": "crc32", "datasets": sums}))


def make_checkpoints():
    def keras_model(f):
        write_legacy_layout(f, None)

    def keras_weights(f):
        write_weights_layout(f, None)

    def kiln_model(f, epochs=2):
        sums = {}
        write_legacy_layout(f, sums)
        text(f, "writer", "kiln 0.1.0")
        write_kiln_group(f, sums, "model", epochs)

    def kiln_weights(f):
        sums = {}
        write_weights_layout(f, sums)
        write_kiln_group(f, sums, "weights")

    h5_file("checkpoint", "valid-keras-model.h5", keras_model)
    h5_file("checkpoint", "valid-keras-weights.h5", keras_weights)
    h5_file("checkpoint", "valid-kiln-model.h5", kiln_model)
    h5_file("checkpoint", "valid-kiln-model-no-history.h5", lambda f: kiln_model(f, epochs=0))
    h5_file("checkpoint", "valid-kiln-weights.h5", kiln_weights)
    h5_file("checkpoint", "valid-keras-model-earliest.h5", keras_model, libver="earliest")
    STRINGS["vlen"] = True
    h5_file("checkpoint", "valid-kiln-model-vlen.h5", kiln_model)
    STRINGS["vlen"] = False


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    make_idx()
    make_npy()
    make_csv()
    make_hdf5()
    make_model_json()
    make_checkpoints()
    too_big = []
    for target in sorted(os.listdir(CORPUS)):
        files = sorted(os.listdir(os.path.join(CORPUS, target)))
        total = sum(os.path.getsize(os.path.join(CORPUS, target, n)) for n in files)
        print("%-12s %3d seeds, %6d bytes" % (target, len(files), total))
        too_big += [os.path.join(target, n) for n in files
                    if os.path.getsize(os.path.join(CORPUS, target, n)) > MAX_SEED_BYTES]
    if too_big:
        print("seeds over %d bytes: %s" % (MAX_SEED_BYTES, ", ".join(too_big)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
