# Progress helpers sourced by the setup scripts: which step runs, elapsed time against the
# usual time, and a heartbeat at least every 10 s while a silent command runs.
# Kept out of the setup scripts so that editing them never changes those scripts' cache keys.
# Messages go to stderr: the scripts' stdout carries only their result (the last line).
# Settings: PROGRESS_TAG (the [tag] on each line), PROGRESS_EVERY (heartbeat seconds, 8: under 10 s with slack).

_progress_t0=$(date +%s)
_step_t0=$_progress_t0

log() { echo "[${PROGRESS_TAG:-setup}] $*" >&2; }

# step "what runs" USUAL_SECONDS: announce a step and how long it usually takes.
step() {
  _step_t0=$(date +%s)
  log "$1${2:+ (usually ~$(fmt_s "$2"))}"
}

# step_done: how long the step just announced took.
step_done() { log "  done in $(fmt_s $(( $(date +%s) - _step_t0 )))"; }

fmt_s() { local s=$1; if (( s >= 90 )); then echo "$((s / 60)) min $((s % 60)) s"; else echo "$s s"; fi; }

# with_heartbeat USUAL_SECONDS LABEL CMD...: run CMD (its output passes through) and print
# "LABEL: 40 s elapsed (usually ~180 s)" every $PROGRESS_EVERY seconds until it ends.
# Returns CMD's exit status.
with_heartbeat() {
  local usual=$1 label=$2; shift 2
  local t0; t0=$(date +%s)
  "$@" &
  local pid=$!
  (
    # (sleep without our fds, so a killed heartbeat never holds a pipe open)
    while sleep "${PROGRESS_EVERY:-8}" </dev/null >/dev/null 2>&1; do
      kill -0 "$pid" 2>/dev/null || exit 0
      local el=$(( $(date +%s) - t0 ))
      log "  … $label: $(fmt_s "$el") elapsed (usually ~$(fmt_s "$usual"))"
    done
  ) &
  local beat=$!
  local rc=0
  wait "$pid" || rc=$?
  kill "$beat" 2>/dev/null || true
  wait "$beat" 2>/dev/null || true
  return "$rc"
}

# cache_key WORDS...: a short, stable key from the install-relevant inputs only.
cache_key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

# summary: total time since the script started.
total_elapsed() { fmt_s $(( $(date +%s) - _progress_t0 )); }
