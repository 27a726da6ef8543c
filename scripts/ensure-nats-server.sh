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
echo "ensure-nats-server: fetching nats-server from Debian sid ($uri)" >&2
apt-get "${opts[@]}" -qq update >&2
( cd "$work" && apt-get "${opts[@]}" -qq download nats-server >&2 )
deb="$(ls -t "$work"/nats-server_*.deb | head -1)"
dpkg -x "$deb" "$root/.cache/nats-server"
bin="$root/.cache/nats-server/usr/sbin/nats-server"
version_ok "$bin" || { echo "ensure-nats-server: $deb does not hold nats-server >= 2.12" >&2; exit 1; }
echo "$bin"
