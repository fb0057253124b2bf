# Sourced by the scripts that install their own Debian packages (setup.sh, fuzz.sh,
# bench_all.sh): the one way this project checks for and installs packages.

# apt_missing PKG...: prints, one per line, those of the packages not installed.
apt_missing() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

# apt_install WHO PKG...: installs the packages (through sudo unless root), saying so on
# stderr as "WHO: installing ..."; nothing when no package is given.
apt_install() {
  local who=$1
  shift
  [ $# -gt 0 ] || return 0
  echo "$who: installing $*" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}
