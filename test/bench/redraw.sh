#!/usr/bin/env bash
# Bytes the TUI writes to its terminal: run a graft command in a tmux window of COLSxROWS under
# script(1), which records every byte graft writes, and count what arrives in SECONDS seconds after
# a warm-up. Also counts full-screen clears (ESC [2J), each of which repaints every cell.
#   test/bench/redraw.sh COLS ROWS SECONDS -- graft args...   (GRAFT_HOME as for graft)
set -euo pipefail
cols=$1 rows=$2 secs=$3; shift 4
root=$(cd "$(dirname "$0")/../.." && pwd)
log=$(mktemp /tmp/graft-redraw-XXXXXX.log)
sock=graft-redraw-$$
cmd="script -q -f $log -c \"node $root/dist/src/cli.js $*\""
tmux -L "$sock" new-session -d -s r -x "$cols" -y "$rows" "$cmd"
pane=$(tmux -L "$sock" list-panes -t r -F '#{pane_pid}')
# script(1) outlives the tmux server: stop graft (its child) and script by pid.
stop() { pkill -P "$pane" 2>/dev/null || true; kill "$pane" 2>/dev/null || true; tmux -L "$sock" kill-server 2>/dev/null || true; rm -f "$log" "/tmp/tmux-$(id -u)/$sock"; }
trap stop EXIT
clears() { grep -ao $'\e\[2J' "$log" | wc -l || true; }
sleep 6 # start-up, daemon connection and the first frames (the first two are whole)
before=$(stat -c %s "$log"); clears0=$(clears)
sleep "$secs"
after=$(stat -c %s "$log"); clears1=$(clears)
echo "${cols}x${rows}: $((after - before)) bytes in ${secs} s, $((clears1 - clears0)) full clears"
tmux -L "$sock" capture-pane -p -t r > "${REDRAW_CAPTURE:-/dev/null}"
