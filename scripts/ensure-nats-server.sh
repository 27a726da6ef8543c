#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.12. Uses $NATS_SERVER_BIN or one on PATH when it is
# new enough; otherwise downloads Debian sid's package with a private apt configuration
# (nothing installed system-wide) and unpacks it into .cache/nats-server (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want_major=2; want_minor=12

version_ok() { # $1 = binary
  local v; v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\.[0-9]*\.[0-9]*\).*/\1/p')" || return 1
  [ -n "$v" ] || return 1
  local major minor; major="${v%%.*}"; minor="$(echo "$v" | cut -d. -f2)"
  [ "$major" -gt "$want_major" ] || { [ "$major" -eq "$want_major" ] && [ "$minor" -ge "$want_minor" ]; }
}

for cand in "${NATS_SERVER_BIN:-}" "$root/.cache/nats-server/usr/sbin/nats-server" "$(command -v nats-server || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && version_ok "$cand"; then echo "$cand"; exit 0; fi
done

work="$root/.cache/apt-sid"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$root/.cache/nats-server"
uri="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1)"
[ -n "$uri" ] || uri="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
[ -n "$uri" ] || { echo "ensure-nats-server: no Debian mirror found in /etc/apt" >&2; exit 1; }
cat > "$work/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri sid main
SRC
opts=(-o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$work/lists" -o Dir::Cache::Archives="$work/archives"
      -o Dir::State::Status=/dev/null -o APT::Sandbox::User=root -o Debug::NoLocking=1)
# Progress on stderr, step by step: the first fetch takes 10-20 s, and a silent wait that long
# looks like a hang. apt's -q keeps its "Get:" lines (what is downloaded, and its size) but drops
# the progress bars, which make no sense in a log.
say() { echo "ensure-nats-server: $*" >&2; }
started=$SECONDS
say "no nats-server >= 2.12 on PATH or in .cache/nats-server; fetching Debian sid's package once (10-20 s)"
say "[1/3] package lists of Debian sid from $uri"
apt-get "${opts[@]}" -q update >&2
say "[2/3] downloading the nats-server package"
( cd "$work" && apt-get "${opts[@]}" -q download nats-server >&2 )
deb="$(ls -t "$work"/nats-server_*.deb | head -1)"
say "[3/3] unpacking $(basename "$deb") into .cache/nats-server"
dpkg -x "$deb" "$root/.cache/nats-server"
bin="$root/.cache/nats-server/usr/sbin/nats-server"
version_ok "$bin" || { say "$deb does not hold nats-server >= 2.12"; exit 1; }
say "$("$bin" --version 2>&1 | head -1) ready in $((SECONDS - started)) s: $bin"
echo "$bin"
