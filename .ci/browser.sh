#!/usr/bin/env bash
# What the browser tests (tests/test_app.py, tests/test_viewer.py) need, on top of `pip install -e .[dev]`:
# the app and viewer extras, Playwright (the Python driver only), and Chromium from the system packages.
# Playwright's own browser download (`playwright install`) is NOT used: the tests point it at the system
# Chromium (tests/browser/driver.py; override with EASI3R_CHROMIUM=/path/to/chromium).
# Run inside the CI virtual environment (it uses whatever `python` is first on PATH). Needs root (or sudo) for apt.
#   EASI3R_CI_PLAYWRIGHT  the playwright requirement (default playwright>=1.40)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  # Debian's package name; on Ubuntu runners `chromium-browser` is a snap shim, so Debian/Docker images are preferred.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
fi
python -m pip install --quiet -e ".[app,viz]" "${EASI3R_CI_PLAYWRIGHT:-playwright>=1.40}"
python - <<'PY'
import shutil
import gradio, playwright, viser  # noqa: F401  (fail here, loudly, if an install is broken)
print("browser tests: chromium", shutil.which("chromium") or shutil.which("chromium-browser"),
      "gradio", gradio.__version__, "viser", viser.__version__)
PY
