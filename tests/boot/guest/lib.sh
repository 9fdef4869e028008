# Helpers for boot-proof job scripts (bash, sourced inside the guest). Every line the host reads starts with LFB-.
#   lfb_check NAME ok|fail CMD...  run CMD (output kept in /tmp/NAME.log), print
#                                  "LFB-CHECK NAME PASS|FAIL expected=ok|fail got=ok|fail"; on FAIL also the log.
#   lfb_value NAME VALUE           print "LFB-VALUE NAME VALUE" for the host to compare.
#   lfb_wait_block DEV             wait (5 s at most) for a block device node.
LFB_FAILED=0
# Markers always reach the console, also from inside a check whose output goes to its log.
exec 3>&1

lfb_check() {
  local name=$1 expect=$2 got start end
  shift 2
  read -r start _ </proc/uptime
  if "$@" >"/tmp/$name.log" 2>&1; then got=ok; else got=fail; fi
  read -r end _ </proc/uptime
  if [[ $got == "$expect" ]]; then
    echo "LFB-CHECK $name PASS expected=$expect got=$got time=$(lfb_seconds "$start" "$end")s"
  else
    echo "LFB-CHECK $name FAIL expected=$expect got=$got time=$(lfb_seconds "$start" "$end")s"
    LFB_FAILED=1
  fi
  if [[ $got != "$expect" || $expect == fail ]]; then
    tail -n 15 "/tmp/$name.log" | sed "s/^/LFB-LOG $name| /"
  fi
  [[ $got == "$expect" ]]
}

lfb_seconds() {
  awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'
}

lfb_value() {
  echo "LFB-VALUE $1 $2" >&3
}

lfb_wait_block() {
  local i
  for i in $(seq 50); do
    [[ -b $1 ]] && return 0
    sleep 0.1
  done
  echo "LFB-WARN block device $1 did not appear"
  return 1
}

lfb_finish() {
  exit "$LFB_FAILED"
}
