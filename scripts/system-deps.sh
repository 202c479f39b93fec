#!/usr/bin/env bash
# Install the Debian packages the tests use as real peers, only those missing.
# Tests never mock these: nginx/dnsmasq/sshd run on loopback inside the tests.
set -euo pipefail
needed=()
# command -> package
declare -A pkgs=(
  [dnsmasq]=dnsmasq            # DNS probe tests: a real resolver serving a test zone
  [sshd]=openssh-server        # SSH probe and installer tests: a real OpenSSH server
  [ssh-keygen]=openssh-client  # stock-tool evidence verification (ssh-keygen -Y verify)
  [chromium]=chromium          # evidence report test: headless Chromium renders the HTML report
  [sudo]=sudo                  # installer test: a non-root login that becomes root with sudo -n
)
for cmd in "${!pkgs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || needed+=("${pkgs[$cmd]}")
done
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${needed[*]} (run: sudo apt-get install ${needed[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}"
