#!/usr/bin/env bash
# Idempotent set-up for `make demo` / `make test` / `make serve` on a fresh Debian machine.
#
#   * Debian packages: libb64-0d (perf_analyzer), redis-server, chromium (the demo page's browser
#     test, driven by Playwright); Java >= 17 is checked, not installed.
#   * A virtualenv OUTSIDE the clone, one per Python version, updated when requirements.txt
#     changes, so a fresh clone on the same machine (CI) reuses it instantly; `.venv` links to it.
#   * Apache Kafka broker jars + log4j2 backend, fetched with Maven from stack/kafka_files/pom.xml.
#   * recbole==1.2.1 (--no-deps), only for the MovieLens-100K files it ships (never imported).
#
# Quiet when everything is already in place; prints progress when it has to download.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RECSYS_CACHE_DIR:-$HOME/.cache/recsys}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

hash_of() { cat "$@" | sha256sum | cut -c1-12; }

# --- Java -------------------------------------------------------------------------------------
command -v java >/dev/null || die "Java >= 17 is required for the Kafka broker (apt-get install openjdk-17-jre-headless)."
java_major="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
[ "${java_major%%.*}" -ge 17 ] 2>/dev/null || die "Java >= 17 is required for the Kafka broker; found ${java_major:-unknown}."

# --- Debian packages --------------------------------------------------------------------------
missing=()
for pkg in libb64-0d redis-server chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing Debian packages: ${missing[*]} (and no apt-get)."
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python virtualenv ------------------------------------------------------------------------
# One venv per Python version, stamped with the hash of requirements.txt: a change of pins runs
# an incremental `pip install` (only what changed is downloaded) instead of a new multi-GB venv.
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
venv="$CACHE/venv-py$pyver"
want="$(hash_of "$ROOT/requirements.txt")"
if [ "$(cat "$venv/.requirements-sha" 2>/dev/null)" != "$want" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    say "creating virtualenv $venv (first run downloads several GB: torch, DALI, Triton)"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  else
    say "requirements.txt changed: updating $venv"
  fi
  "$venv/bin/python" -m pip install --progress-bar on -r "$ROOT/requirements.txt"
  # Only the MovieLens-100K files inside this wheel are used; its dependencies are not wanted.
  "$venv/bin/python" -m pip install -q --no-deps recbole==1.2.1
  echo "$want" > "$venv/.requirements-sha"
fi
ln -sfn "$venv" "$ROOT/.venv"

# --- Kafka broker jars ------------------------------------------------------------------------
kafka_dir="$CACHE/kafka-$(hash_of "$ROOT/stack/kafka_files/pom.xml")"
if [ ! -f "$kafka_dir/.complete" ]; then
  command -v mvn >/dev/null || die "Maven is required to fetch the Kafka broker jars (apt-get install maven)."
  say "fetching Apache Kafka broker jars with Maven into $kafka_dir"
  rm -rf "$kafka_dir"
  mvn -q -B -Dstyle.color=never -f "$ROOT/stack/kafka_files/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$kafka_dir/libs" -DincludeScope=runtime
  touch "$kafka_dir/.complete"
fi
ln -sfn "$kafka_dir/libs" "$ROOT/.kafka-libs"
