# Steps under one overall deadline, for benchmarks/run_gpu_checks.sh (sourced, not run).
#
#   checks_init                        start the clock, empty $SUMMARY and $STEPS_LOG
#   step NAME LIMIT_S COMMAND...       run COMMAND (a program or an exported function) for at
#                                      most its cap, appending its output to $STEPS_LOG as it
#                                      comes; record "NAME exit S Ns" in $SUMMARY
#   optional_step NAME LIMIT_S CMD...  the same, but too little time left is no failure
#
# A step's cap = min(LIMIT_S, what is left of DEADLINE_S after the time spent so far, the kill
# grace and the finishing reserve); a step whose cap would be under MIN_STEP_S is skipped. A
# step ends within cap + KILL_GRACE_S (timeout sends TERM at the cap and KILL after the grace),
# so every step ends by DEADLINE_S - FINISH_RESERVE_S (+ 1 s of the clock's whole seconds),
# whatever the limits add up to. Sets FAILED=1 when a step fails, is cut or skipped.
#
# STEP_CAPS=off: no cap and no deadline, every step runs to its end (the CPU smoke test: how long
# a step takes there depends on the machine; the caps are tested with deliberately slow steps).
# DRY_RUN=1: record each step's name, limit and command in $SUMMARY without running it.
DEADLINE_S=${DEADLINE_S:-480}
KILL_GRACE_S=${KILL_GRACE_S:-5}
FINISH_RESERVE_S=${FINISH_RESERVE_S:-10}
MIN_STEP_S=${MIN_STEP_S:-10}
STEP_CAPS=${STEP_CAPS:-on}
DRY_RUN=${DRY_RUN:-0}
if [[ $STEP_CAPS != on && $STEP_CAPS != off ]]; then
    echo "error: STEP_CAPS must be on or off, got '$STEP_CAPS'" >&2
    exit 2
fi

checks_init() {
    CHECKS_START=$SECONDS
    FAILED=0
    : > "$SUMMARY"
    : > "$STEPS_LOG"
}

step_cap() {  # step_cap LIMIT_S: the cap a step starting now gets (0: no time left for it)
    local left=$((DEADLINE_S - (SECONDS - CHECKS_START) - KILL_GRACE_S - FINISH_RESERVE_S))
    local cap=$(($1 < left ? $1 : left))
    echo $((cap < MIN_STEP_S ? 0 : cap))
}

_run_step() {  # _run_step REQUIRED NAME LIMIT_S COMMAND...
    local required=$1 name=$2 limit=$3
    shift 3
    local cap at=$((SECONDS - CHECKS_START))
    if ((DRY_RUN)); then
        printf '%-30s dry run (limit %ss): %s\n' "$name" "$limit" "$*" | tee -a "$SUMMARY"
        return 0
    fi
    local runner=(timeout --kill-after="$KILL_GRACE_S")
    if [[ $STEP_CAPS == off ]]; then
        cap=off
        runner=()
    else
        cap=$(step_cap "$limit")
        if ((cap == 0)); then
            ((required)) && FAILED=1
            printf '%-30s skipped: %3ss left of %ss   at %3ss\n' "$name" \
                $((DEADLINE_S - at)) "$DEADLINE_S" "$at" | tee -a "$SUMMARY"
            return 0
        fi
        runner+=("$cap")
        cap="${cap}s"
    fi
    local start=$SECONDS status offset
    offset=$(stat -c %s "$STEPS_LOG")
    echo "===== $name (cap $cap, limit ${limit}s, at ${at}s) =====" >> "$STEPS_LOG"
    echo "== $name (cap $cap)"
    "${runner[@]}" bash -c '"$@"' "$name" "$@" >> "$STEPS_LOG" 2>&1
    status=$?
    echo "----- $name: exit $status after $((SECONDS - start))s" >> "$STEPS_LOG"
    # this step's part of the log, on the console
    tail -c +$((offset + 1)) "$STEPS_LOG" | tail -n $((status == 0 ? 12 : 30))
    ((status != 0)) && FAILED=1
    printf '%-30s exit %-3s %4ss (cap %s) at %3ss\n' "$name" "$status" "$((SECONDS - start))" \
        "$cap" "$at" | tee -a "$SUMMARY"
    return 0
}

step() { _run_step 1 "$@"; }
optional_step() { _run_step 0 "$@"; }
