#!/usr/bin/env python3
"""SIGINT and SIGTERM during training.

Each run is the default job's setup (ModelCheckpoint of the best model, EarlyStopping with
restore_best_weights) on the tiny model, with a checkpoint log, and gets SIGINT or SIGTERM at a
random moment; one run in ten gets a second SIGINT 100 ms after the first. Pass:
  - the process exits with 130 (SIGINT) or 143 (SIGTERM) within BOUND seconds of the signal
    (a finished step, the final checkpoint and the writer's queue take milliseconds here; the
    bound is for a loaded machine), or with 0 when the signal came after the run had finished;
  - after one signal the interrupt checkpoint is published, verifies, and holds the step the
    message names, the last step the run finished; no writer deadlock (a run that does not exit
    within the bound is killed and counted);
  - after two signals the files are the previous or the final ones, never damaged;
  - resuming from the interrupt checkpoint ends with weights bit for bit equal to a run that
    was never interrupted.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BOUND = 10.0  # seconds from the first signal to the exit


def main():
    args = harness.parse_args(__doc__.split("\n")[0], default_count=20, long_count=200)
    rng = random.Random(args.seed)
    failures = []
    stopped = finished = doubles = verified = resumed_exact = nothing_trained = late = early = 0
    slowest = 0.0
    with harness.Workdir(args.keep) as work:
        data = harness.make_dataset(os.path.join(work, "data"))
        model = harness.make_model_json(os.path.join(work, "model.json"))

        def command(run_dir):
            return harness.fit_command(
                args.kiln, data, model, "--epochs", "40", "--checkpoint",
                os.path.join(run_dir, "best.h5"), "--interrupt-checkpoint",
                os.path.join(run_dir, "interrupted.h5"), "--save", os.path.join(run_dir, "final.h5"))

        reference = os.path.join(work, "reference")
        os.makedirs(reference)
        code, _, err, seconds = harness.run(command(reference), env=harness.kiln_env())
        if code != 0:
            harness.report("signals: the reference run failed", [err[-1000:]])
        expected = harness.file_state(os.path.join(reference, "final.h5"))

        for trial in range(args.count):
            run_dir = os.path.join(work, f"run-{trial}")
            os.makedirs(run_dir)
            log = os.path.join(run_dir, "checkpoints.log")
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            double = trial % 10 == 9
            if double:
                sig = signal.SIGINT
            p = subprocess.Popen(command(run_dir), env=harness.kiln_env(log=log),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.02, 0.7 * seconds))
            sent = time.monotonic()
            p.send_signal(sig)
            if double:
                time.sleep(0.1)
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            try:
                _, err = p.communicate(timeout=BOUND)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
                failures.append(f"trial {trial}: no exit within {BOUND} s of the signal "
                                f"(deadlock?): {err[-300:]}")
                continue
            took = time.monotonic() - sent
            slowest = max(slowest, took)
            what = f"trial {trial} ({signal.Signals(sig).name}{' twice' if double else ''})"
            interrupted = os.path.join(run_dir, "interrupted.h5")
            if p.returncode == 0:
                finished += 1
                continue
            if p.returncode == -sig and not err.strip():
                # Before main() installed the handlers (the dynamic loader, start-up): the
                # default action ended the process; it had written nothing.
                early += 1
                written = [f for f in os.listdir(run_dir) if f.endswith(".h5")]
                if written:
                    failures.append(f"{what}: killed before start-up ended, yet wrote {written}")
                continue
            if p.returncode != 128 + sig:
                failures.append(f"{what}: exit {p.returncode}, not {128 + sig}: {err[-300:]}")
                continue
            stopped += 1
            if "after the last epoch: training is complete" in err:
                # The signal came after the last step: the run's own files are its final ones.
                late += 1
                if not harness.inspect(args.kiln, os.path.join(run_dir, "final.h5"))[0]:
                    failures.append(f"{what}: final.h5 missing or damaged after a late signal")
                continue
            if double:
                doubles += 1
                for path in (interrupted, os.path.join(run_dir, "best.h5")):
                    if os.path.exists(path) and not harness.inspect(args.kiln, path)[0]:
                        failures.append(f"{what}: {path} does not load after two signals")
                continue
            if "nothing was trained" in err:
                nothing_trained += 1
                if os.path.exists(interrupted):
                    failures.append(f"{what}: a checkpoint was written with nothing trained")
                continue
            m = re.search(r"fit stopped by SIG\w+ .*\(step (\d+)\); wrote ", err)
            if not m or not os.path.exists(interrupted):
                failures.append(f"{what}: no interrupt checkpoint reported and written: "
                                f"{err[-400:]}")
                continue
            ok, text = harness.inspect(args.kiln, interrupted)
            state = harness.file_state(interrupted) if ok else None
            if not ok or state["step"] != int(m[1]):
                failures.append(f"{what}: {interrupted} does not load or is not of step {m[1]}: "
                                f"{text[-300:]}")
                continue
            verified += 1
            # Continue the run from the interrupt checkpoint: the same end as the run never
            # interrupted.
            code, _, err, _ = harness.run(
                [args.kiln, "fit", "--device", "cpu", "--data", data, "--verbose", "0",
                 "--resume", interrupted, "--checkpoint", os.path.join(run_dir, "best.h5"),
                 "--save", os.path.join(run_dir, "final.h5")], env=harness.kiln_env())
            if code != 0:
                failures.append(f"{what}: resuming failed: {err[-300:]}")
                continue
            final = harness.file_state(os.path.join(run_dir, "final.h5"))
            if final["crc"] == expected["crc"] and final["step"] == expected["step"]:
                resumed_exact += 1
            else:
                failures.append(f"{what}: resumed from step {m[1]}, ended at step "
                                f"{final['step']} with crc {final['crc']:08x}; the run never "
                                f"interrupted: step {expected['step']}, {expected['crc']:08x}")

    harness.report(
        f"signals: {args.count} runs: {stopped} stopped by the signal ({doubles} by two SIGINTs, "
        f"{nothing_trained} before any step, {late} after the last step), {finished} had "
        f"finished, {early} came before start-up had installed the handlers (ended by the "
        f"signal, nothing written); exit within "
        f"{slowest:.2f} s of the signal at most (bound {BOUND:.0f} s), 0 deadlocks; "
        f"{verified} interrupt checkpoints verified at the step named, {resumed_exact} resumed "
        f"runs bit-exact against a run never interrupted", failures)


if __name__ == "__main__":
    main()
