#!/usr/bin/env python3
"""Runs `kiln bench` and its PyTorch peers case by case in one invocation, and prints kiln, the
peer and their ratio for every case.

    bench/suite.py --kiln build/kiln --device cpu --quick     # the CPU suite, minutes on 2 cores
    bench/suite.py --kiln build/kiln --device cuda --json suite.json   # on a GPU machine

kiln runs first (`kiln bench`, every case; bench/suite.h says what each measures), then each
case's peer, on the same device, with the same samples, epochs, repetitions and threads:

  M1, M2, M3, C1  bench/peers/torch_mlp.py or torch_cnn.py at the case's batch size (M3: hidden
                  2048,2048,2048 and kiln's dtype), in every --peer-modes mode
  V1              the validation pass of the M1 and C1 peer runs; on CUDA runs of their own with
                  --split-validation, as kiln takes its own (eager mode only)
  K1              the M1 peer with torch.save of the model and optimizer at every epoch's end
                  (eager mode; the save is the same in every mode), and a run without it just
                  before, as kiln takes its own baseline
  S1, O1, L1      bench/peers/torch_micro.py: a state_dict clone, Adam's step (foreach, and
                  fused on CUDA), a chain of tiny ops eager and as a torch.cuda.graph
Every fp32 figure has TF32 off on both sides (the peers set allow_tf32 False and
set_float32_matmul_precision("highest"); kiln's CUDA GEMMs are pedantic float32).

The ratio is the peer's median over kiln's, so above 1 means kiln is faster. A case kiln could
not run here (the GPU cases on the CPU) is listed with kiln's reason and no peer is run for it.
The machine, the load average before and after, and every run's command and JSON go into --json.
"""

import argparse
import datetime
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import compare  # noqa: E402  (the machine, running a process, the table's alignment)

REPO = os.path.dirname(BENCH)
PEERS = {"mlp": os.path.join(BENCH, "peers", "torch_mlp.py"),
         "cnn": os.path.join(BENCH, "peers", "torch_cnn.py"),
         "micro": os.path.join(BENCH, "peers", "torch_micro.py")}
# kiln's fit rows and the peer run that matches each: model, batch size, extra peer flags.
FIT_PEERS = {"M1": ("mlp", 32), "M1 eager": ("mlp", 32), "M2 b256": ("mlp", 256), "M2 b1024": ("mlp", 1024),
             "M3": ("mlp", 4096), "C1": ("cnn", 128), "K1": ("mlp", 32),
             "V1 mlp": ("mlp", 32), "V1 cnn": ("cnn", 128)}
QUICK_SAMPLES = 6000  # as kiln bench --quick


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kiln", default=os.path.join(REPO, "build", "kiln"),
                   help="the kiln command (default: %(default)s)")
    compare.add_run_arguments(p, run_timeout=900)
    p.add_argument("--quick", action="store_true",
                   help=f"kiln bench --quick: the first {QUICK_SAMPLES} samples, a smaller "
                        "peak GEMM (the peers get the same samples)")
    p.add_argument("--max-samples", type=int, default=0, help="the first N samples only")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per training case")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--repetitions", type=int, default=5, help="timed rounds of S1, O1, L1")
    p.add_argument("--cases", default="", help="only these kiln bench cases (M1,S1,...)")
    p.add_argument("--json", help="write everything here")
    args = p.parse_args(argv)
    compare.resolve_peer_modes(args)
    if args.epochs < 1 or args.warmup_epochs < 0 or args.repetitions < 1:
        p.error("need --epochs >= 1, --warmup-epochs >= 0, --repetitions >= 1")
    return args


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, f"no readable JSON result ({e})"


class Runs:
    """Runs each distinct command once and keeps its JSON result (or why there is none)."""

    def __init__(self, args, tmp):
        self.args, self.tmp, self.done, self.record = args, tmp, {}, []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.data:
            self.env["KILN_FASHION_MNIST_DIR"] = os.path.abspath(args.data)

    def get(self, name, cmd, fresh=False):
        """The result of cmd: run now, or kept from an earlier run unless `fresh`."""
        key = (tuple(cmd), len(self.done) if fresh else None)
        if key in self.done:
            return self.done[key]
        out = os.path.join(self.tmp, f"run-{len(self.done)}.json")
        log = (os.path.join(self.args.log_dir, f"{len(self.done):02d}-{name.replace(' ', '-')}.log")
               if self.args.log_dir else None)
        code, seconds = compare.run_one(name, cmd + ["--json", out], self.env,
                                        self.args.run_timeout, log)
        # A run that failed may still have written figures (kiln bench, when one case failed).
        result, error = load_json(out)
        if code is None:
            error = f"stopped after {self.args.run_timeout:.0f}s"
        elif code != 0:
            error = f"exit code {code}"
        self.record.append({"name": name, "command": shlex.join(cmd), "seconds": seconds,
                            "error": error, "result": result})
        self.done[key] = (result, error)
        return result, error


def samples(args):
    return args.max_samples or (QUICK_SAMPLES if args.quick else 0)


def kiln_command(args):
    cmd = [args.kiln, "bench", "--device", args.device, "--epochs", str(args.epochs),
           "--warmup-epochs", str(args.warmup_epochs), "--repetitions", str(args.repetitions)]
    if args.quick:
        cmd.append("--quick")
    if args.max_samples:
        cmd += ["--max-samples", str(args.max_samples)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.data:
        cmd += ["--data", os.path.abspath(args.data)]
    if args.cases:
        cmd += ["--cases", args.cases]
    return cmd


def common_peer_flags(args):
    flags = ["--device", args.device]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    return flags


def fit_peer(args, row, mode, tmp):
    """The peer command for one of kiln's fit rows in one mode."""
    model, batch = FIT_PEERS[row["id"]]
    cmd = [args.python, PEERS[model], "--mode", mode, "--batch-size", str(batch),
           "--epochs", str(args.epochs), "--warmup-epochs", str(args.warmup_epochs)]
    cmd += common_peer_flags(args)
    if samples(args):
        cmd += ["--max-samples", str(samples(args))]
    if args.data:
        cmd += ["--data", os.path.abspath(args.data)]
    if row["id"] == "M3":
        # kiln's M3 runs its GEMMs in bf16 (details.precision); the peer then trains in bf16
        details = row.get("details", {})
        bf16 = details.get("precision") == "bf16" or details.get("dtype") == "bfloat16"
        cmd += ["--hidden", "2048,2048,2048", "--dtype", "bf16" if bf16 else "fp32"]
    if row["id"] == "K1":
        cmd += ["--checkpoint", os.path.join(tmp, "k1.pt")]
    if row["case"] == "V1" and args.device == "cuda":
        cmd.append("--split-validation")
    return cmd


def peer_figures(args, row, runs, tmp):
    """[(mode, median seconds, note)] of the peers of one kiln row; seconds None on a failure,
    whose note says what failed."""
    out = []
    if row["case"] in ("S1", "O1", "L1"):
        cmd = [args.python, PEERS["micro"], "--repetitions", str(args.repetitions)]
        result, error = runs.get("pytorch micro", cmd + common_peer_flags(args))
        if error:
            return [("-", None, f"failed: {error}")]
        for mode, r in result["cases"].get(row["id"], {}).items():
            out.append((mode, r["median_s"], ""))
        return out or [("-", None, "failed: torch_micro.py has no " + row["id"])]

    modes = args.peer_modes
    if row["case"] in ("K1", "V1") and (row["case"] == "K1" or args.device == "cuda"):
        modes = modes[:1]  # one mode: what it measures is the same in all
    for mode in modes:
        if row["case"] == "K1":
            # A baseline of its own just before, as kiln takes its own.
            base, _ = runs.get(f"pytorch {mode} K1 baseline",
                               fit_peer(args, dict(row, id="M1"), mode, tmp), fresh=True)
        result, error = runs.get(f"pytorch {mode} {row['id']}", fit_peer(args, row, mode, tmp))
        if error:
            out.append((mode, None, f"failed: {error}"))
            continue
        if row["case"] == "V1":
            val = statistics.median(result["validation_times_s"])
            share = statistics.median(v / e for v, e in zip(result["validation_times_s"],
                                                             result["epoch_times_s"]))
            out.append((mode, val, f"{share:.1%} of the epoch"))
        elif row["case"] == "K1":
            note = ""
            if base:
                extra = result["median_epoch_s"] - base["median_epoch_s"]
                note = (f"{extra * 1e3:+.1f} ms/epoch "
                        f"({extra / base['median_epoch_s']:+.1%}) against none")
            out.append((mode, result["median_epoch_s"], note))
        else:
            out.append((mode, result["median_epoch_s"], f"val_acc {result['val_accuracy']:.3f}"))
    return out


def seconds(s):
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.3f} s"
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.2f} us"


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, compare.on_terminate)
    signal.signal(signal.SIGINT, compare.on_terminate)
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    started = time.perf_counter()
    machine = compare.machine_info()
    load_start = os.getloadavg()
    print(compare.describe_machine(machine, args.device), flush=True)

    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, os.path.abspath(__file__)] + argv),
              "machine": machine, "device": args.device, "load_average_start": load_start,
              "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
              "rows": []}
    failures = 0
    with tempfile.TemporaryDirectory(prefix="kiln-suite-") as tmp:
        runs = Runs(args, tmp)
        kiln, error = runs.get("kiln", kiln_command(args))
        if error:
            print(f"suite.py: kiln bench failed: {error}", file=sys.stderr)
            failures += 1
            if kiln is None:
                return 1
        table = [("case", "kiln", "per", "peer", "pytorch", "pytorch/kiln", "kiln note",
                  "pytorch note")]
        for row in kiln["cases"]:
            if "skipped" in row:
                table.append((row["id"], "-", "-", "-", "-", "-", row["skipped"], ""))
                report["rows"].append({"id": row["id"], "kiln": row, "peers": []})
                continue
            peers = peer_figures(args, row, runs, tmp)
            entry = {"id": row["id"], "kiln": row, "peers": []}
            for i, (mode, peer_s, note) in enumerate(peers):
                ratio = peer_s / row["median_s"] if peer_s else None
                failures += peer_s is None
                table.append((row["id"] if i == 0 else "", seconds(row["median_s"]) if i == 0
                              else "", row["unit"] if i == 0 else "", mode, seconds(peer_s),
                              compare.fmt(ratio, ".2f"), row.get("note", "") if i == 0 else "",
                              note))
                entry["peers"].append({"mode": mode, "median_s": peer_s, "ratio": ratio,
                                       "note": note})
            report["rows"].append(entry)
        report["kiln_bench"] = kiln
        report["runs"] = runs.record

    run_s = time.perf_counter() - started
    print("\n" + compare.describe_machine(machine, args.device))
    print(f"kiln: {kiln['machine']['backend']} - commit {kiln['commit']}")
    peers_seen = {r["result"]["torch_version"] for r in runs.record
                  if r["result"] and "torch_version" in r["result"]}
    print(f"pytorch: {', '.join(sorted(peers_seen)) or '-'} - TF32 off, float32 matmul precision "
          f"highest - {args.threads or 'all'} threads")
    print(f"{samples(args) or 'all'} samples, {args.warmup_epochs} warm-up + {args.epochs} timed "
          f"epochs, {args.repetitions} repetitions; load average {load_start[0]:.2f} at the "
          f"start, {os.getloadavg()[0]:.2f} at the end")
    print(compare.align(table, left=(0, 2, 3, 6, 7)))
    print("median of each side; pytorch/kiln = PyTorch's median over kiln's (above 1: kiln is "
          "faster)")
    print(f"the suite took {run_s:.0f} s")
    report["run_seconds"] = run_s
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"written: {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
