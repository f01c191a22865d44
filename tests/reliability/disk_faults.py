#!/usr/bin/env python3
"""ENOSPC, EIO and failed fsyncs at every call position of a save.

A preloaded shim (tests/reliability/fault_shim.c) counts the file-system calls one checkpoint
save makes (opening, writing, truncating, syncing and closing its temporary, the rename, the
directory's fsync) and then, run by run, fails each position in turn with ENOSPC and with EIO.
The run rewrites a checkpoint that already exists. After each fault:
  - a warning names the file and the system's reason (strerror) as soon as the save fails, and
    the run ends with an error, not a success, since its last checkpoint was not written;
  - the previous file is byte for byte as it was; only a fault after the rename (the
    directory's fsync) may leave the new file, complete and verified, and it is still reported
    as not written;
  - the checkpoint log never calls the failed save written; no temporary is left; no crash or
    hang.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ERRORS = {"ENOSPC": "No space left on device", "EIO": "Input/output error"}


def extra(p):
    p.add_argument("--shim", required=True, help="the built fault shim (libkiln_fault_shim.so)")


def main():
    args = harness.parse_args(__doc__.split("\n")[0], default_count=0, long_count=0, extra=extra)
    if not os.path.exists(args.shim):
        sys.exit(f"{args.shim}: no such shim (build the kiln_fault_shim target)")
    failures = []
    faults = warned = kept = published_new = reported = left_over = crashed = tolerated = 0
    with harness.Workdir(args.keep) as work:
        data = harness.make_dataset(os.path.join(work, "data"), n_train=512)
        model = harness.make_model_json(os.path.join(work, "model.json"))
        ck = os.path.join(work, "ck.h5")
        command = harness.fit_command(args.kiln, data, model, "--epochs", "1", "--checkpoint",
                                      ck, "--no-save-best-only", "--early-stopping", "none",
                                      "--interrupt-checkpoint", "none")
        # The previous file: another seed, so that it differs from what the runs write.
        code, _, err, _ = harness.run(command + ["--seed", "2"], env=harness.kiln_env())
        if code != 0:
            harness.report("disk faults: the first run failed", [err[-1000:]])
        previous = harness.file_bytes(ck)

        # The positions of one save.
        counts = os.path.join(work, "positions.txt")
        code, _, err, _ = harness.run(command, env=harness.kiln_env(extra={
            "LD_PRELOAD": args.shim, "KILN_FAULT_SHIM": "count=" + counts}))
        if code != 0 or not os.path.exists(counts):
            harness.report("disk faults: the counting run failed", [err[-1000:]])
        with open(counts) as f:
            positions = [line.split()[1] for line in f if line.strip()]
        rename_at = positions.index("rename") + 1 if "rename" in positions else len(positions) + 1

        for k, call in enumerate(positions, start=1):
            for name, text in ERRORS.items():
                what = f"position {k} ({call}) {name}"
                with open(ck, "wb") as f:
                    f.write(previous)
                log = os.path.join(work, "checkpoints.log")
                if os.path.exists(log):
                    os.remove(log)
                env = harness.kiln_env(log=log, extra={"LD_PRELOAD": args.shim,
                                                       "KILN_FAULT_SHIM": f"fail={k}:{name}"})
                try:
                    code, _, err, _ = harness.run(command, env=env, timeout=60)
                except Exception as e:  # noqa: BLE001 - a hang is the finding
                    crashed += 1
                    failures.append(f"{what}: {e}")
                    continue
                faults += 1
                if code < 0 or code > 1:
                    crashed += 1
                    failures.append(f"{what}: exit {code}: {err[-300:]}")
                    continue
                now = harness.file_bytes(ck) if os.path.exists(ck) else None
                written = [e for e in harness.read_log(log)[0] if e["event"] == "written"]
                if code == 0:
                    # Two faults do not fail a save: the listing of stale temporaries (the first
                    # open, of the directory) is best effort, and a close after a successful
                    # fsync cannot lose what the fsync made durable. The save must then really
                    # have succeeded.
                    benign = (k == 1 and call == "open") or (
                        call == "close" and k >= 2 and positions[k - 2] == "fsync")
                    if benign and written and harness.inspect(args.kiln, ck)[0]:
                        tolerated += 1
                    else:
                        failures.append(f"{what}: the run reported success: {err[-300:]}")
                    continue
                if "kiln: warning: checkpoint not written" in err and ck in err and text in err:
                    warned += 1
                else:
                    failures.append(f"{what}: no warning naming {ck} and '{text}': {err[-400:]}")
                if written:
                    reported += 1
                    failures.append(f"{what}: the log calls the failed save written")
                if now == previous:
                    kept += 1
                elif k > rename_at and now is not None and harness.inspect(args.kiln, ck)[0]:
                    published_new += 1
                else:
                    failures.append(f"{what}: {ck} changed, and is not a complete new file")
                left = harness.temporaries(work)
                if left:
                    left_over += len(left)
                    failures.append(f"{what}: temporaries left: {left}")
                    for t in left:
                        os.remove(t)

    harness.report(
        f"disk faults: {len(positions)} call positions in a save x {len(ERRORS)} errors "
        f"({'/'.join(ERRORS)}) = {faults} faults: {warned} warned with the file and the reason, "
        f"{kept} kept the previous file byte for byte, {published_new} left the complete new "
        f"file (a fault after the rename), {reported} reported as written, {left_over} "
        f"temporaries left, {crashed} crashes or hangs; {tolerated} did not fail the save (the "
        f"directory listing for stale temporaries, a close after a successful fsync) and the "
        f"save completed; calls: {' '.join(positions)}",
        failures)


if __name__ == "__main__":
    main()
