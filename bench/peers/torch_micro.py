#!/usr/bin/env python3
"""The PyTorch peers of `kiln bench`'s cases that are not whole epochs (bench/suite.h).

  S1        a best-weights snapshot as a PyTorch user keeps one: a clone of every tensor of the
            M1 model's state_dict
  O1 mlp    one Adam step (Keras's defaults) over the M1 model's six parameter tensors
  O1 11.2M  the same over one tensor of 11,173,962 parameters (ResNet-18's count)
  L1 eager  (CUDA) a chain of 1,000 tiny ops, x.add_(1) on 1,024 floats, launched one by one
  L1 graph  (CUDA) the same chain captured once with torch.cuda.graph and replayed

Adam runs with foreach=True (a few multi-tensor kernels for every parameter) on every device,
and on CUDA with fused=True as well. Each figure is timed as kiln times its own: one untimed
call, then --repetitions rounds of enough calls to take about 20 ms, each round ended by a
device synchronisation; the figure is seconds per call, one per round.

    bench/peers/torch_micro.py --device cpu --repetitions 5 --json micro.json
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mlp as base  # noqa: E402  (the M1 model and Keras's Adam, beside this file)

LARGE_BUFFER = 11173962  # as kiln bench's O1 11.2M
LAUNCH_CHAIN = 1000       # ops per L1 chain, as kiln bench's
ROUND_S = 0.02


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(device, repetitions, op, round_s=ROUND_S):
    """Seconds per call of op, one figure per round (kiln bench's time_calls)."""
    op()
    synchronize(device)
    start = time.perf_counter()
    op()
    synchronize(device)
    once = max(time.perf_counter() - start, 1e-9)
    calls = min(max(int(round_s / once), 1), 100000)
    per_call = []
    for _ in range(repetitions):
        start = time.perf_counter()
        for _ in range(calls):
            op()
        synchronize(device)
        per_call.append((time.perf_counter() - start) / calls)
    return per_call


def figure(seconds, **extra):
    return dict(seconds=seconds, median_s=statistics.median(seconds), **extra)


def mlp(device):
    args = argparse.Namespace(hidden=[256, 128])
    return base.build_model(args).to(device)


def snapshot(device, repetitions):
    model = mlp(device)
    state = model.state_dict()
    take = lambda: {k: v.detach().clone() for k, v in state.items()}
    weight_bytes = sum(v.numel() * v.element_size() for v in state.values())
    return {"clone": figure(time_calls(device, repetitions, take), weight_bytes=weight_bytes)}


def adam_step(device, repetitions, params):
    modes = {"foreach": {"foreach": True}}
    if device.type == "cuda":
        modes["fused"] = {"fused": True}
    results = {}
    for mode, options in modes.items():
        for p in params:
            p.grad = torch.full_like(p, 1e-3)
        optimizer = base.make_adam(params, **options)
        n = sum(p.numel() for p in params)
        results[mode] = figure(time_calls(device, repetitions, optimizer.step), parameters=n,
                               tensors=len(params))
    return results


def launch_chain(device, repetitions):
    x = torch.zeros(1024, device=device)

    def chain():
        for _ in range(LAUNCH_CHAIN):
            x.add_(1.0)

    # Capture after warming up on a side stream, as PyTorch asks.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        chain()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain()

    per_op = lambda seconds: [s / LAUNCH_CHAIN for s in seconds]
    # One chain per call: its time spread over its ops.
    eager = per_op(time_calls(device, repetitions, chain, round_s=0))
    replay = per_op(time_calls(device, repetitions, graph.replay, round_s=0))
    return ({"eager": figure(eager, ops_per_chain=LAUNCH_CHAIN)},
            {"graph": figure(replay, ops_per_chain=LAUNCH_CHAIN)})


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repetitions", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="CPU threads for --device cpu (default: all cores)")
    p.add_argument("--cases", default="S1,O1,L1", help="comma-separated: S1, O1, L1")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.repetitions < 1 or args.threads < 1:
        p.error("need --repetitions >= 1, --threads >= 1")
    args.cases = [c for c in args.cases.split(",") if c]
    return args


def main(argv):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torch_micro: --device cuda but torch.cuda.is_available() is False",
              file=sys.stderr)
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(1)

    cases, skipped = {}, {}
    if "S1" in args.cases:
        cases["S1"] = snapshot(device, args.repetitions)
    if "O1" in args.cases:
        cases["O1 mlp"] = adam_step(device, args.repetitions, list(mlp(device).parameters()))
        large = torch.nn.Parameter(torch.full((LARGE_BUFFER,), 0.01, device=device))
        cases["O1 11.2M"] = adam_step(device, args.repetitions, [large])
    if "L1" in args.cases:
        if device.type == "cuda":
            cases["L1 eager"], cases["L1 graph"] = launch_chain(device, args.repetitions)
        else:
            skipped["L1"] = "not measured: needs a GPU"

    for case, modes in cases.items():
        for mode, r in modes.items():
            print(f"{case} ({mode}): median {r['median_s'] * 1e6:.2f} us per call")
    for case, why in skipped.items():
        print(f"{case}: {why}")
    if args.json:
        result = {"engine": "pytorch", "torch_version": torch.__version__,
                  "device": args.device if args.device == "cpu"
                  else f"cuda ({torch.cuda.get_device_name(0)})",
                  "threads": torch.get_num_threads(), "repetitions": args.repetitions,
                  "cases": cases, "skipped": skipped}
        base.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
