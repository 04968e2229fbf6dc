#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine without Rust into
# .gpu/ (ignored by git: added to .git/info/exclude): the release xtask
# built with the cuda feature, stripped and xz-compressed, and the full
# Fashion-MNIST. Under the device tool's 64 MiB: carry [".gpu"] and run
#   scripts/gpu-check.sh
# there. Usage: scripts/gpu-pack.sh [DATA_DIR] (default ../shared/data/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data/fashion-mnist}"
[ -d "$data" ] || { echo "gpu-pack.sh: no data folder $data" >&2; exit 2; }
grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
cargo build --release -p xtask --features cuda
rm -rf .gpu && mkdir -p .gpu/data/fashion-mnist
target="${CARGO_TARGET_DIR:-target}"
strip -o .gpu/xtask "$target/release/xtask"
xz -T0 -6 -f .gpu/xtask
cp "$data"/*-ubyte.gz .gpu/data/fashion-mnist/
git rev-parse HEAD > .gpu/commit
du -sh .gpu .gpu/* >&2
echo "carry [\".gpu\"]; run scripts/gpu-check.sh (it reads .gpu/)" >&2
