#!/usr/bin/env bash
# Takes a screenshot of a run's report.html the way a person would see it: headless Chromium opens the page from
# disk (no network) and saves a PNG. Not part of CI.
#
#   scripts/screenshot_report.sh RUN_DIR OUT.png [WIDTH,HEIGHT]
#
# Needs Debian's `chromium` package (installed with apt-get when missing and running as root).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 RUN_DIR OUT.png [WIDTH,HEIGHT]" >&2
    exit 2
fi
run_dir=$1
out=$2
size=${3:-1400,4000}
report="$(cd "$run_dir" && pwd)/report.html"
if [ ! -f "$report" ]; then
    echo "error: $report does not exist; run \`elbo report --run $run_dir\` first" >&2
    exit 1
fi

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        echo "error: chromium is not installed (apt-get install chromium)" >&2
        exit 1
    fi
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
out_path="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$profile" --hide-scrollbars \
    --screenshot="$out_path" --window-size="$size" "file://$report" 2>/dev/null
echo "wrote $out_path"
