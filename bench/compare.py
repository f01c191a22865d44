#!/usr/bin/env python3
"""Runs kiln's benchmark and its PyTorch peer on one device, in one invocation, and compares them.

    bench/compare.py --device cuda --epochs 3 --warmup-epochs 1 --json results.json
    bench/compare.py --model cnn --batch-size 128 --rounds 2   # the convnet preset

Each engine runs as its own process, one after the other (kiln first, then each peer mode; with
--rounds N the whole sequence repeats N times, so that a drift of the machine shows in both). Both
train the same recipe (--model mlp: bench/peers/torch_mlp.py says which; --model cnn: the convnet
of bench/peers/torch_cnn.py) for the same epochs and batch size and
report the same figure: the median over timed epochs of one epoch's wall time, training and
validation together. The ratio printed is peer median / kiln median, so above 1 means kiln is
faster. The machine (CPU model and cores, or GPU, driver and memory) is printed first and saved
in the JSON with every run's own JSON, so a figure never travels without its machine and command.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The PyTorch peer of each model kiln's bench_fit runs (its --model).
PEERS = {"mlp": os.path.join(REPO, "bench", "peers", "torch_mlp.py"),
         "cnn": os.path.join(REPO, "bench", "peers", "torch_cnn.py")}


def add_run_arguments(p, run_timeout):
    """The flags compare.py and suite.py share: where the peers run and how each run is kept."""
    p.add_argument("--python", default=sys.executable,
                   help="the Python that runs the peers; it needs torch (default: this one)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--peer-modes",
                   help="comma-separated torch_mlp.py modes (default: eager on cpu; "
                        "eager,fused,graph,compile on cuda, compile last because it compiles "
                        "longest)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for both engines (default: each engine's own, all cores)")
    p.add_argument("--data", help="Fashion-MNIST folder for both engines (--data; also exported "
                                  "as KILN_FASHION_MNIST_DIR)")
    p.add_argument("--run-timeout", type=float, default=run_timeout,
                   help="seconds one run may take before it is stopped (default: %(default)s)")
    p.add_argument("--log-dir", help="save each run's output here")


def resolve_peer_modes(args):
    """--peer-modes as a list, its default chosen by --device."""
    if args.peer_modes is None:
        args.peer_modes = "eager" if args.device == "cpu" else "eager,fused,graph,compile"
    args.peer_modes = [m for m in args.peer_modes.split(",") if m]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kiln", default=os.path.join(REPO, "build", "bench", "bench_fit"),
                   help="kiln's benchmark binary (default: %(default)s)")
    p.add_argument("--kiln-args", default="",
                   help="extra arguments for the kiln binary, one shell-quoted string "
                        "(write --kiln-args='--flag value')")
    add_run_arguments(p, run_timeout=300)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per run")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs first, per run")
    p.add_argument("--model", choices=sorted(PEERS), default="mlp",
                   help="mlp (the default recipe) or cnn (the convnet preset; its figures use "
                        "--batch-size 128); passed to bench_fit, and picks the peer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole sequence N times")
    p.add_argument("--json", help="write everything here (rewritten after every run)")
    args = p.parse_args(argv)
    resolve_peer_modes(args)
    if args.epochs < 1 or args.warmup_epochs < 0 or args.rounds < 1:
        p.error("need --epochs >= 1, --warmup-epochs >= 0, --rounds >= 1")
    return args


# ---- the machine ---------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def gpu_info():
    """One dict per GPU from nvidia-smi, or an empty list when there is none or no nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return []
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    keys = query.split(",")
    return [dict(zip(keys, (v.strip() for v in line.split(","))))
            for line in out.splitlines() if line.strip()]


def machine_info():
    return {"host": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "os": platform.platform(), "gpus": gpu_info()}


def describe_machine(m, device):
    lines = [f"machine: {m['host']} - {m['cpu']} - {m['cores']} cores - {m['os']}"]
    for g in m["gpus"]:
        lines.append(f"gpu: {g.get('name')} - driver {g.get('driver_version')} - "
                     f"{g.get('memory.total')} - compute capability {g.get('compute_cap')}")
    if device == "cuda" and not m["gpus"]:
        lines.append("gpu: none found by nvidia-smi")
    return "\n".join(lines)


# ---- one run -------------------------------------------------------------------------------------

# The run in progress. Each run gets a process group of its own (PyTorch's compiler starts
# worker processes), so that a timeout or a SIGTERM to this script ends all of it.
current_run = None


def kill_run(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def on_terminate(signum, frame):
    if current_run is not None:
        kill_run(current_run)
    print(f"compare.py: stopped by signal {signum}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


def run_one(name, cmd, env, timeout, log_path):
    """Runs cmd, echoing its output with a `[name]` prefix (and into log_path when given).

    Returns (exit code or None when stopped at the timeout, seconds taken).
    """
    global current_run
    print(f"\n[{name}] $ {shlex.join(cmd)}", flush=True)
    log = open(log_path, "w") if log_path else None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, bufsize=1, start_new_session=True)
    current_run = proc
    timed_out = threading.Event()

    def stop():
        timed_out.set()
        kill_run(proc)

    timer = threading.Timer(timeout, stop)
    timer.start()
    try:
        for line in proc.stdout:
            print(f"[{name}] {line}", end="", flush=True)
            if log:
                log.write(line)
        proc.wait()
    finally:
        timer.cancel()
        current_run = None
        if log:
            log.close()
    seconds = time.perf_counter() - start
    if timed_out.is_set():
        print(f"[{name}] stopped after {timeout:.0f}s (--run-timeout)", flush=True)
        return None, seconds
    return proc.returncode, seconds


def read_result(path):
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"no readable JSON result ({e})"
    if not result.get("epoch_times_s"):
        return None, "JSON result has no epoch_times_s"
    return result, None


def merge_rounds(results):
    """One result per engine: the last round's figures, every round's epoch times, their median."""
    merged = dict(results[-1])
    times = [t for r in results for t in r["epoch_times_s"]]
    merged["epoch_times_s"] = times
    merged["median_epoch_s"] = statistics.median(times)
    if results[-1].get("median_epoch_s") and results[-1].get("samples_per_s"):
        # samples per epoch, as the engine counted them, over the merged median
        samples = results[-1]["samples_per_s"] * results[-1]["median_epoch_s"]
        merged["samples_per_s"] = samples / merged["median_epoch_s"]
    merged["rounds"] = len(results)
    return merged


# ---- the report ----------------------------------------------------------------------------------

def fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def table(report):
    header = ("engine", "median s", "min s", "samples/s", "val_loss", "val_acc", "peer/kiln")
    rows, failed = [header], []
    entries = [("kiln", None, report["kiln"])]
    entries += [("pytorch", mode, r) for mode, r in report["peers"].items()]
    for engine, mode, r in entries:
        name = engine if mode is None else f"{engine} {mode}"
        if not r or "error" in r:
            failed.append(f"{name}: failed ({r.get('error', 'not run')})")
            continue
        ratio = "1 (ref)" if mode is None else fmt(report["ratios"].get(mode), ".2f")
        rows.append((name, fmt(r["median_epoch_s"], ".3f"), fmt(min(r["epoch_times_s"]), ".3f"),
                     fmt(r.get("samples_per_s"), ".0f"), fmt(r.get("val_loss"), ".4f"),
                     fmt(r.get("val_accuracy"), ".4f"), ratio))
    return "\n".join([align(rows)] + failed)


def align(rows, left=(0,)):
    """rows[0] is the header: columns padded to their widest cell, those in `left` to the left
    (the others, figures, to the right), and a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in left else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)
    machine = machine_info()
    print(describe_machine(machine, args.device), flush=True)

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.data:
        env["KILN_FASHION_MNIST_DIR"] = os.path.abspath(args.data)
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    common = ["--device", args.device, "--epochs", str(args.epochs),
              "--warmup-epochs", str(args.warmup_epochs), "--batch-size", str(args.batch_size)]

    # Both engines take --threads and --data; given once here, they get the same.
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.data:
        common += ["--data", os.path.abspath(args.data)]

    # The runs, in the order they happen within one round.
    runs = [("kiln", None,
             [args.kiln, "--model", args.model] + common + shlex.split(args.kiln_args))]
    for mode in args.peer_modes:
        runs.append(("pytorch", mode, [args.python, PEERS[args.model], "--mode", mode] + common))

    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, os.path.abspath(__file__)] + argv),
        "machine": machine,
        "device": args.device,
        "settings": {"model": args.model, "epochs": args.epochs,
                     "warmup_epochs": args.warmup_epochs,
                     "batch_size": args.batch_size, "rounds": args.rounds,
                     "peer_modes": args.peer_modes},
        "kiln": {}, "peers": {}, "ratios": {}, "runs": [],
    }
    collected = {}  # (engine, mode) -> list of per-round results; None once a round failed
    failures = 0

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")

    with tempfile.TemporaryDirectory(prefix="kiln-compare-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for engine, mode, cmd in runs:
                key = (engine, mode)
                name = engine if mode is None else f"{engine} {mode}"
                if collected.get(key, []) is None:
                    continue  # failed in an earlier round: do not spend the time again
                out_json = os.path.join(tmp, f"{engine}-{mode or 'fit'}-{round_no}.json")
                log = (os.path.join(args.log_dir, f"{engine}-{mode or 'fit'}-{round_no}.log")
                       if args.log_dir else None)
                if engine == "kiln" and not os.access(cmd[0], os.X_OK):
                    code, seconds, error = None, 0.0, f"{cmd[0]} is not an executable"
                    print(f"\n[{name}] {error}", flush=True)
                else:
                    code, seconds = run_one(name, cmd + ["--json", out_json], env,
                                            args.run_timeout, log)
                    error = None
                    if code is None:
                        error = f"stopped after {args.run_timeout:.0f}s"
                    elif code != 0:
                        error = f"exit code {code}"
                result = None
                if error is None:
                    result, error = read_result(out_json)
                report["runs"].append({"engine": engine, "mode": mode, "round": round_no,
                                       "command": shlex.join(cmd), "seconds": seconds,
                                       "error": error, "result": result})
                if error:
                    failures += 1
                    collected[key] = None
                    summary = {"error": error}
                else:
                    collected.setdefault(key, []).append(result)
                    summary = merge_rounds(collected[key])
                if engine == "kiln":
                    report["kiln"] = summary
                else:
                    report["peers"][mode] = summary

                # Ratios from what has finished so far.
                kiln = report["kiln"]
                report["ratios"] = {}
                if kiln and "error" not in kiln:
                    for m, r in report["peers"].items():
                        if "error" not in r:
                            report["ratios"][m] = r["median_epoch_s"] / kiln["median_epoch_s"]
                save()

    print("\n" + describe_machine(machine, args.device))
    print(f"{args.model} on {args.device}, batch {args.batch_size}, {args.epochs} timed epochs after "
          f"{args.warmup_epochs} warm-up, {args.rounds} round(s); "
          "epoch = training steps + validation")
    print(table(report))
    # What each engine says it ran on, so that a fallback (say, to the CPU) cannot pass unseen.
    for name, r in [("kiln", report["kiln"])] + [(f"pytorch {m}", r)
                                                 for m, r in report["peers"].items()]:
        if r and "error" not in r:
            where = str(r.get("device", "?"))
            extra = (f", torch {r['torch_version']}, {r.get('threads')} CPU threads"
                     if "torch_version" in r else "")
            warn = "" if args.device in where.lower() else f"  <- not {args.device}!"
            print(f"  {name}: {where}{extra}{warn}")
    if report["ratios"]:
        print("peer/kiln = PyTorch median epoch time / kiln median epoch time "
              "(above 1: kiln is faster)")
    if args.json:
        print(f"written: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
