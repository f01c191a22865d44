#!/usr/bin/env python3
"""A crash at each step of the save protocol.

KILN_CHECKPOINT_FAULT=crash=POINT@N ends the process (_exit) the N-th time a save reaches POINT
(src/io/atomic_h5.h): created, written, closed, synced, renamed, published, and ModelCheckpoint's
"deleting" (before a file that left the top k is removed). For each point, several times:
  - a checkpoint file that exists, rewritten by a run that crashes in its first write: after
    the crash the file is the previous one byte for byte (a crash before the rename) or the
    complete new one (from the rename on), never neither, and it loads and verifies;
  - the k best files of a templated ModelCheckpoint, crashing in its first or second write: the
    best file so far is never missing;
  - BackupAndRestore with double_checkpoint, crashing in the first backup of a resumed run: the
    same command continues from a backup;
and each run continues from what is left, with no temporary left behind.
"""

import os
import random
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

CRASH_EXIT = 86  # h5::kCrashExitCode
PROTOCOL = ["created", "written", "closed", "synced", "renamed", "published"]
EPOCHS = 6


def main():
    args = harness.parse_args(__doc__.split("\n")[0], default_count=3, long_count=20)
    rng = random.Random(args.seed)  # which write of the top-k run crashes
    failures = []
    crashes = old_kept = new_kept = neither = best_lost = resumed_ok = 0
    with harness.Workdir(args.keep) as work:
        data = harness.make_dataset(os.path.join(work, "data"), n_train=1024)
        model = harness.make_model_json(os.path.join(work, "model.json"))

        def fit(run_dir, *flags):
            return harness.fit_command(args.kiln, data, model, "--early-stopping", "none",
                                       "--interrupt-checkpoint", "none", *flags)

        for point in PROTOCOL + ["deleting"]:
            for rep in range(args.count):
                run_dir = os.path.join(work, f"{point}-{rep}")
                os.makedirs(run_dir)
                log = os.path.join(run_dir, "checkpoints.log")
                what = f"{point} #{rep}"

                if point != "deleting":
                    # 1. A checkpoint file that exists (another run's, so its bytes differ from
                    # what this run writes) and a run that rewrites it, crashing in its first
                    # write: the previous bytes before the rename, a complete new file after.
                    ck = os.path.join(run_dir, "ck.h5")
                    single = fit(run_dir, "--checkpoint", ck, "--no-save-best-only")
                    code, _, err, _ = harness.run(single + ["--epochs", "1", "--seed", "2"],
                                                  env=harness.kiln_env())
                    if code != 0:
                        failures.append(f"{what}: the first run failed: {err[-300:]}")
                        continue
                    previous = harness.file_bytes(ck)
                    code, _, err, _ = harness.run(
                        single + ["--epochs", str(EPOCHS)],
                        env=harness.kiln_env(log=log, faults=f"crash={point}@1"))
                    if code != CRASH_EXIT:
                        failures.append(f"{what}: exit {code}, not the crash: {err[-300:]}")
                        continue
                    crashes += 1
                    new = PROTOCOL.index(point) >= PROTOCOL.index("renamed")
                    ok, text = harness.inspect(args.kiln, ck) if os.path.exists(ck) else (False, "")
                    if not ok:
                        neither += 1
                        failures.append(f"{what}: {ck} is gone or does not load: {text[-300:]}")
                        continue
                    now = harness.file_bytes(ck)
                    if new and now != previous:
                        new_kept += 1
                    elif not new and now == previous:
                        old_kept += 1
                    else:
                        failures.append(f"{what}: {ck} is {'the previous' if now == previous else 'a new'} "
                                        f"file after a crash at '{point}'")
                    # The run continues from the file; the dead run's temporary goes.
                    code, _, err, _ = harness.run(
                        [args.kiln, "fit", "--device", "cpu", "--data", data, "--verbose", "0",
                         "--resume", ck, "--epochs", str(EPOCHS), "--checkpoint", ck,
                         "--no-save-best-only", "--early-stopping", "none"],
                        env=harness.kiln_env(log=log))
                    left = harness.temporaries(run_dir)
                    if code != 0 or left:
                        failures.append(f"{what}: resuming failed (exit {code}) or left "
                                        f"{left}: {err[-300:]}")
                    else:
                        resumed_ok += 1

                # 2. The k best of a templated ModelCheckpoint: a crash at this point of any save
                # (or before a deletion) never loses the best file so far.
                best_dir = os.path.join(run_dir, "best")
                template = os.path.join(best_dir, "{epoch:02d}-{val_loss:.5f}.h5")
                os.makedirs(best_dir)
                n = rng.randint(1, 2)
                code, _, err, _ = harness.run(
                    fit(run_dir, "--epochs", "12", "--checkpoint", template, "--save-top-k", "2"),
                    env=harness.kiln_env(log=log, faults=f"crash={point}@{n}"))
                if code not in (CRASH_EXIT, 0):
                    failures.append(f"{what} (top k): exit {code}: {err[-300:]}")
                elif code == CRASH_EXIT:
                    crashes += 1
                    written = [e["path"] for e in harness.read_log(log)[0]
                               if e["event"] == "written" and e["path"].startswith(best_dir)]
                    if written:
                        def loss(path):
                            return float(re.search(r"-([0-9.]+)\.h5$", path)[1])
                        best = min(written, key=loss)
                        if not os.path.exists(best):
                            best_lost += 1
                            failures.append(f"{what} (top k): the best file {best} is gone")
                        elif not harness.inspect(args.kiln, best)[0]:
                            best_lost += 1
                            failures.append(f"{what} (top k): the best file {best} does not load")

                # 3. BackupAndRestore keeping the previous backup: the next run continues.
                if point == "deleting":
                    continue
                backup_dir = os.path.join(run_dir, "backup")
                command = fit(run_dir, "--checkpoint", "none", "--backup-dir", backup_dir,
                              "--double-checkpoint")
                # A backup after one epoch, kept; the next run continues from it and crashes in
                # its first backup.
                code, _, err, _ = harness.run(command + ["--epochs", "1", "--keep-backup"],
                                              env=harness.kiln_env())
                if code != 0:
                    failures.append(f"{what} (backup): the first run failed: {err[-300:]}")
                    continue
                command += ["--epochs", str(EPOCHS)]
                code, _, err, _ = harness.run(command, env=harness.kiln_env(
                    faults=f"crash={point}@1"))
                if code != CRASH_EXIT:
                    failures.append(f"{what} (backup): exit {code}: {err[-300:]}")
                    continue
                crashes += 1
                code, _, err, _ = harness.run(command, env=harness.kiln_env())
                if code != 0 or "resuming from" not in err:
                    failures.append(f"{what} (backup): the rerun did not continue (exit "
                                    f"{code}): {err[-300:]}")
                elif harness.temporaries(backup_dir):
                    failures.append(f"{what} (backup): temporaries left: "
                                    f"{harness.temporaries(backup_dir)}")
                else:
                    resumed_ok += 1
                shutil.rmtree(run_dir, ignore_errors=True)

    points = len(PROTOCOL) + 1
    harness.report(
        f"crash inside the save: {points} points x {args.count}: {crashes} crashes, "
        f"{old_kept} kept the previous file, {new_kept} the new one, {neither} neither, "
        f"{best_lost} best files lost, {resumed_ok} runs continued from what was left",
        failures)


if __name__ == "__main__":
    main()
