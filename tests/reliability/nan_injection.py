#!/usr/bin/env python3
"""NaN injected into the loss or a gradient.

KILN_INJECT_NAN=loss@S makes the model's output NaN in optimizer step S, so that step's loss
and gradients are NaN; grad@S writes NaN into one gradient after step S's backward pass, so the
update puts NaN into a weight and every later loss is NaN (src/model.cpp). Each run is the
default job's setup (ModelCheckpoint of the best model, EarlyStopping with restore_best_weights
and check_finite) on the tiny model, with or without TerminateOnNaN, and S drawn at random in
epochs 2 to 4. Pass:
  - the run stops in the epoch of step S: TerminateOnNaN at the first NaN batch loss, otherwise
    EarlyStopping's check_finite at that epoch's end;
  - the best checkpoint is never written from a non-finite value: it verifies, is from an epoch
    before the NaN, and every weight in it is finite;
  - the model the run ends with (EarlyStopping restores the best weights) is finite.
"""

import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

STEPS_PER_EPOCH = 58  # 2048 samples, validation_split 0.1, batch 32: 1843 / 32, rounded up


def main():
    args = harness.parse_args(__doc__.split("\n")[0], default_count=8, long_count=100)
    rng = random.Random(args.seed)
    failures = []
    acted = finite_best = finite_final = 0
    with harness.Workdir(args.keep) as work:
        data = harness.make_dataset(os.path.join(work, "data"))
        model = harness.make_model_json(os.path.join(work, "model.json"))
        for trial in range(args.count):
            where = ["loss", "grad"][trial % 2]
            terminate = (trial // 2) % 2 == 0
            epoch = rng.randint(1, 3)  # 0-based: epochs 2 to 4
            # grad@S shows in step S + 1; keep that in the same epoch.
            batch = rng.randint(0, STEPS_PER_EPOCH - (2 if where == "grad" else 1))
            step = epoch * STEPS_PER_EPOCH + batch + 1
            what = f"{where}@{step} ({'TerminateOnNaN' if terminate else 'check_finite'})"
            run_dir = os.path.join(work, f"run-{trial}")
            os.makedirs(run_dir)
            best = os.path.join(run_dir, "best.h5")
            final = os.path.join(run_dir, "final.h5")
            metrics = os.path.join(run_dir, "metrics.json")
            flags = ["--epochs", "10", "--patience", "20", "--checkpoint", best, "--save", final,
                     "--metrics-json", metrics]
            if terminate:
                flags.append("--terminate-on-nan")
            code, out, err, _ = harness.run(
                harness.fit_command(args.kiln, data, model, *flags, verbose=2),
                env=harness.kiln_env(extra={"KILN_INJECT_NAN": f"{where}@{step}"}))
            if code != 0:
                failures.append(f"{what}: exit {code}: {err[-300:]}")
                continue
            with open(metrics) as f:
                epochs_run = len(json.load(f)["epochs"])
            said = out + err
            if terminate:
                nan_batch = batch + (1 if where == "grad" else 0)
                stopped_here = f"Batch {nan_batch}: Invalid loss, terminating training" in said
            else:
                stopped_here = re.search(r"val_loss = nan is not finite", said) is not None
            if stopped_here and epochs_run == epoch + 1:
                acted += 1
            else:
                failures.append(f"{what}: ran {epochs_run} epochs (the NaN was in epoch "
                                f"{epoch + 1}); stop message {'seen' if stopped_here else 'missing'}")
            if os.path.exists(best):
                ok, text = harness.inspect(args.kiln, best)
                state = harness.file_state(best) if ok else None
                if ok and state["finite"] and state["epoch"] <= epoch:
                    finite_best += 1
                else:
                    failures.append(f"{what}: the best checkpoint is damaged, non-finite or from "
                                    f"the NaN epoch: {state} {text[-200:]}")
            else:
                failures.append(f"{what}: no best checkpoint was kept")
            if harness.file_state(final)["finite"]:
                finite_final += 1
            else:
                failures.append(f"{what}: the model the run ended with is not finite")

    harness.report(
        f"non-finite values: {args.count} runs (NaN in the loss or a gradient, with TerminateOnNaN "
        f"or EarlyStopping's check_finite): {acted} stopped in the epoch of the NaN, "
        f"{finite_best} kept a finite best checkpoint from before it, {finite_final} ended with "
        f"finite (restored) weights", failures)


if __name__ == "__main__":
    main()
