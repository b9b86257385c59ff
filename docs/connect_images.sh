#!/bin/sh
# Regenerate the figures of docs/connect.md (docs/images/connect_*.png) from the full demo with --connect.
# Usage (from the repository root): sh docs/connect_images.sh [DEMO_FOLDER]
set -e
out="${1:-lossmap-demo}"
lossmap demo --connect --out "$out"
cp "$out/connect_barriers.png" docs/images/connect_barriers.png
cp "$out/curve.png" docs/images/connect_curve.png
cp "$out/curve_profile.png" docs/images/connect_curve_profile.png
grep -E '^(unaligned|aligned|curve|line)_' "$out/summary.txt"
