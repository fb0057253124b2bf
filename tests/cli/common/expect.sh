# Shared by the CLI test scripts (sourced, not run): a failure counter and `expect`.

failures=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

mentions() {  # mentions DESCRIPTION TEXT: the last error names TEXT
  grep -qF -- "$2" err.txt || fail "$1: error does not mention \"$2\": $(head -c 300 err.txt)"
}

# expect CODE DESCRIPTION -- command...: exit code CODE; on failure exactly one line on
# stderr ("vmoe: error: ..."; CLI11's usage errors add a "Run with --help" line) and
# nothing on stdout. The command's output is left in out.txt and err.txt.
expect() {
  local want=$1 what=$2
  shift 3
  "$@" >out.txt 2>err.txt
  local got=$?
  if [ "$got" != "$want" ]; then
    fail "$what: exit $got, expected $want (stderr: $(tail -c 300 err.txt))"
    return
  fi
  if [ "$want" != 0 ]; then
    local lines
    lines=$(grep -c . err.txt)
    if [ "$lines" != 1 ] && ! grep -q "^Run with --help" err.txt; then
      fail "$what: expected a one-line error, got $lines lines: $(head -c 300 err.txt)"
    fi
    [ -s out.txt ] && fail "$what: printed to stdout on error: $(head -c 200 out.txt)"
  fi
  echo "ok: $what"
}
