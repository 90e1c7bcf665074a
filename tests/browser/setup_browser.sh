#!/usr/bin/env bash
# Installs what tests/browser needs, idempotently: Debian's chromium (never a downloaded browser build)
# and playwright-core from the npm registry into tests/browser/node_modules.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "[setup_browser] /usr/bin/chromium missing: run 'apt-get install chromium' as root" >&2; exit 2
  fi
fi
if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  command -v npm >/dev/null || { echo "[setup_browser] npm is not installed" >&2; exit 2; }
  # playwright-core never downloads browsers; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD keeps it that way
  (cd "$HERE" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
echo "[setup_browser] ready: $(/usr/bin/chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('$HERE/node_modules/playwright-core/package.json').version")"
