#!/usr/bin/env bash
# The cost of EarlyStopping with restore_best_weights (its monitor and its device-side snapshot)
# on the default recipe's epoch: bench_fit without and with it, alternately, in one run.
#
#   bench/callback_overhead.sh [BENCH_FIT] [ROUNDS] [-- extra bench_fit flags]
#
# Prints each run's median epoch and the overhead of the median of the "with" medians over the
# median of the "without" ones.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench=${1:-$repo/build/bench/bench_fit}
rounds=${2:-3}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for r in $(seq 1 "$rounds"); do
    for es in off on; do
        "$bench" --epochs 3 --warmup-epochs 1 --early-stopping "$es" "$@" \
            --json "$scratch/$es-$r.json" > /dev/null
    done
done
python3 - "$scratch" "$rounds" <<'PY'
import json, statistics, sys
scratch, rounds = sys.argv[1], int(sys.argv[2])
medians = {es: [json.load(open(f"{scratch}/{es}-{r}.json"))["median_epoch_s"]
                for r in range(1, rounds + 1)] for es in ("off", "on")}
for es, values in medians.items():
    print(f"EarlyStopping {es:3}: median epochs " + ", ".join(f"{v:.4f} s" for v in values))
off, on = statistics.median(medians["off"]), statistics.median(medians["on"])
print(f"overhead of EarlyStopping(restore_best_weights=True): {100 * (on - off) / off:+.2f}% "
      f"({on:.4f} s against {off:.4f} s per epoch)")
PY
