#!/usr/bin/env bash
# Install what building slaprobe-speedups (the collector's compiled hot paths) needs, when missing:
# a C compiler and the headers of the Python that runs slaprobe. Without them `make install`
# still works and the collector runs the same paths in Python, two to three times slower on
# evidence export and verify; so on a fresh Debian machine (as root) they are installed here.
# Elsewhere (not root, not Debian, a Python of its own without headers) this only says what to do.
set -euo pipefail
python=${1:-python3}
if "$python" speedups/can_build.py; then
  exit 0
fi
needed=()
command -v "${CC:-cc}" >/dev/null 2>&1 || needed+=(gcc)
headers=$("$python" -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["include"], "Python.h"))')
if [ ! -e "$headers" ]; then
  # A Debian python3.X finds its headers in python3.X-dev; another build (pyenv, a source
  # build) ships its own, and no package helps it.
  real=$(readlink -f "$("$python" -c 'import sys; print(sys.executable)')")
  case "$real" in
    /usr/bin/python3.*) needed+=("$(basename "$real")-dev") ;;
    *) echo "no Python.h for $real: slaprobe-speedups will not be built" >&2 ;;
  esac
fi
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "to build slaprobe-speedups, install: ${needed[*]} (Debian: sudo apt-get install ${needed[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" || echo "could not install ${needed[*]}" >&2
