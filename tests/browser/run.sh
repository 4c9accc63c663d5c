#!/usr/bin/env bash
# The browser tests (the operator page; a customer's journey with real SMTP and Envoy):
# installs what they need (Debian's chromium and chromedriver, Selenium in the project's
# venv), builds keygatectl and the filter, and runs them in headless Chromium. Loopback only. `make browser` runs this.
# KEYGATE_SCREENSHOT=docs/keys-page.png refreshes the README's screenshot of the operator's
# account page, KEYGATE_ACCOUNT_SCREENSHOT=docs/account-page.png the customers' Settings →
# Account (and docs/account-page-phone.png beside it); by default both go to target/browser/.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/browser: needs Debian's chromium and chromium-driver: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
fi

make -s build venv
if [ ! -e .venv/.browser-installed ] || [ tests/browser/requirements.txt -nt .venv/.browser-installed ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r tests/browser/requirements.txt
  touch .venv/.browser-installed
fi

KEYGATE_BROWSER=1 exec .venv/bin/pytest tests/browser -q -p no:cacheprovider "$@"
