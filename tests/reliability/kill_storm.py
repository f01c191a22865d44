#!/usr/bin/env python3
"""SIGKILLs at random moments of runs that back up every batch.

A run trains the tiny model with BackupAndRestore every batch (and ModelCheckpoint's best file)
and is killed with SIGKILL at a random moment; the same command then continues from the backup,
and is killed again, N times. After every kill:
  - every published file (the backup, the best model) loads and verifies: `kiln inspect` checks
    every checksum, and h5py reads the weights on its own;
  - the restarted run resumes from a step at least as late as the last checkpoint the killed
    runs' logs call written (KILN_CHECKPOINT_LOG): resume never goes back past a written file;
  - once the restarted run has written the backup, no temporary of a dead run is left.
At the end the run is let finish: its final weights must equal, bit for bit, those of a run that
was never killed (exact resume within an epoch), and no temporary may be left.
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

EPOCHS = 300
KILL_WINDOW = 0.6  # seconds after the start; start-up (loading, compiling) takes about 0.05


def main():
    args = harness.parse_args(__doc__.split("\n")[0], default_count=40, long_count=1000)
    rng = random.Random(args.seed)
    failures = []
    with harness.Workdir(args.keep) as work:
        data = harness.make_dataset(os.path.join(work, "data"))
        model = harness.make_model_json(os.path.join(work, "model.json"))

        def command(run_dir):
            return harness.fit_command(
                args.kiln, data, model, "--epochs", str(EPOCHS), "--backup-dir",
                os.path.join(run_dir, "backup"), "--backup-save-freq", "1", "--checkpoint",
                os.path.join(run_dir, "best.h5"), "--early-stopping", "none",
                "--interrupt-checkpoint", "none", "--save", os.path.join(run_dir, "final.h5"))

        # The run that is never killed.
        reference = os.path.join(work, "reference")
        os.makedirs(reference)
        code, _, err, _ = harness.run(command(reference), env=harness.kiln_env())
        if code != 0:
            harness.report("kill storm: the reference run failed", [err[-2000:]])
        expected = harness.file_state(os.path.join(reference, "final.h5"))

        storm = os.path.join(work, "storm")
        os.makedirs(storm)
        log = os.path.join(storm, "checkpoints.log")
        backup = os.path.join(storm, "backup", "latest.h5")
        best = os.path.join(storm, "best.h5")
        env = harness.kiln_env(log=log)
        kills = unloadable = stale = went_back = completed = resumed = inside_save = 0
        log_offset = written = 0
        last_written_step = -1  # of the backup, over every run so far
        # Until `count` runs were killed (a run that finishes before its kill moment is not
        # one, and is started over), within a bound on the trials.
        trial = -1
        while kills < args.count and trial < 3 * args.count:
            trial += 1
            p = subprocess.Popen(command(storm), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.0, KILL_WINDOW))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            _, err = p.communicate()
            if p.returncode == -signal.SIGKILL and any(
                    harness.temporary_pid(t) == p.pid
                    for t in harness.temporaries(os.path.dirname(backup)) + harness.temporaries(storm)):
                inside_save += 1  # the kill left this run's temporary: it landed inside a save
            if p.returncode == 0:
                completed += 1  # it finished before the kill: the backup is gone, start over
            elif p.returncode != -signal.SIGKILL:
                failures.append(f"trial {trial}: exit {p.returncode}: {err[-500:]}")

            # This run's resume point against what the earlier runs had written.
            m = re.search(r"resuming from \S+: epoch \d+ of \d+, after batch \d+ \(step (\d+)\)", err)
            if m:
                resumed += 1
                if int(m[1]) < last_written_step:
                    went_back += 1
                    failures.append(f"trial {trial}: resumed at step {m[1]}, but step "
                                    f"{last_written_step} had been written")

            entries, log_offset = harness.read_log(log, log_offset)
            written += sum(1 for e in entries if e["event"] == "written")
            mine = [e for e in entries if e["event"] == "written" and e["path"].endswith("latest.h5")]
            if mine:
                last_written_step = mine[-1]["step"]
                # This run wrote the backup: the dead runs' temporaries beside it are gone.
                for t in harness.temporaries(os.path.dirname(backup)):
                    if harness.temporary_pid(t) not in (None, p.pid):
                        stale += 1
                        failures.append(f"trial {trial}: stale temporary {t} left after a "
                                        "restart wrote the backup")
            if p.returncode == 0:
                last_written_step = -1  # a completed run removes its backup

            for path in (backup, best):
                if not os.path.exists(path):
                    continue
                ok, text = harness.inspect(args.kiln, path)
                try:
                    harness.file_state(path)
                except Exception as e:  # noqa: BLE001 - any failure to read is the finding
                    ok, text = False, f"h5py: {e}"
                if not ok:
                    unloadable += 1
                    failures.append(f"trial {trial}: {path} does not load: {text[-300:]}")

        if kills < args.count:
            failures.append(f"only {kills} of {args.count} runs were killed in {trial + 1} trials")

        # Let the run finish: the same weights as the run never killed, and nothing left over.
        code, _, err, _ = harness.run(command(storm), env=env, timeout=300)
        final_matches = False
        if code != 0:
            failures.append(f"the final run failed: {err[-500:]}")
        else:
            final = harness.file_state(os.path.join(storm, "final.h5"))
            final_matches = final["crc"] == expected["crc"] and final["step"] == expected["step"]
            if not final_matches:
                failures.append(f"final weights crc {final['crc']:08x} at step {final['step']}, "
                                f"the run never killed: {expected['crc']:08x} at step "
                                f"{expected['step']}")
        left = harness.temporaries(storm) + harness.temporaries(os.path.join(storm, "backup"))
        if left:
            failures.append(f"temporaries left at the end: {left}")
        written += sum(1 for e in harness.read_log(log, log_offset)[0] if e["event"] == "written")

    harness.report(
        f"kill storm: {kills} kills ({inside_save} inside a save; {completed} runs finished "
        f"first), {resumed} resumes, "
        f"{written} checkpoints written, {unloadable} unloadable, {went_back} resumes behind a "
        f"written checkpoint, {stale} stale temporaries, {len(left)} temporaries at the end; "
        f"final weights {'bit-exact' if final_matches else 'DIFFERENT'} against a run never killed",
        failures)


if __name__ == "__main__":
    main()
