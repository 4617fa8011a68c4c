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
DEADLINE_S=${DEADLINE_S:-480}
KILL_GRACE_S=${KILL_GRACE_S:-5}
FINISH_RESERVE_S=${FINISH_RESERVE_S:-10}
MIN_STEP_S=${MIN_STEP_S:-10}

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
    cap=$(step_cap "$limit")
    if ((cap == 0)); then
        ((required)) && FAILED=1
        printf '%-30s skipped: %3ss left of %ss   at %3ss\n' "$name" \
            $((DEADLINE_S - at)) "$DEADLINE_S" "$at" | tee -a "$SUMMARY"
        return 0
    fi
    local start=$SECONDS status offset
    offset=$(stat -c %s "$STEPS_LOG")
    echo "===== $name (cap ${cap}s, limit ${limit}s, at ${at}s) =====" >> "$STEPS_LOG"
    echo "== $name (cap ${cap}s)"
    timeout --kill-after="$KILL_GRACE_S" "$cap" bash -c '"$@"' "$name" "$@" >> "$STEPS_LOG" 2>&1
    status=$?
    echo "----- $name: exit $status after $((SECONDS - start))s" >> "$STEPS_LOG"
    # this step's part of the log, on the console
    tail -c +$((offset + 1)) "$STEPS_LOG" | tail -n $((status == 0 ? 12 : 30))
    ((status != 0)) && FAILED=1
    printf '%-30s exit %-3s %4ss (cap %ss) at %3ss\n' "$name" "$status" "$((SECONDS - start))" \
        "$cap" "$at" | tee -a "$SUMMARY"
    return 0
}

step() { _run_step 1 "$@"; }
optional_step() { _run_step 0 "$@"; }
