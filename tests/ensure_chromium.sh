#!/bin/sh
# Make Debian's Chromium available for the headless report test (tests/test_report.py).
# Idempotent: does nothing when chromium is already installed. Never fails the build: when apt is
# unavailable or the install fails, it says so and the browser test skips with that reason.
if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: apt-get is not available; the headless browser test will be skipped" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_chromium: not root and no password-less sudo; install chromium by hand (apt-get install chromium)" >&2
        exit 0
    fi
fi
echo "ensure_chromium: installing chromium with apt-get (once)" >&2
if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
       $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    echo "ensure_chromium: could not install chromium; the headless browser test will be skipped" >&2
fi
exit 0
