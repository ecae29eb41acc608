#!/usr/bin/env bash
# Packages the four crates as crates.io would receive them (`cargo package --workspace`), then
# builds and runs a scratch application that depends on the packaged `framepack` (its three
# siblings patched to their packaged copies, as crates.io would serve them) and runs the
# README's library example in it. Run by CI (.ci/run); from the repository root:
#   bash tools/package_check.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
target=${CARGO_TARGET_DIR:-$root/target}
cargo package --workspace --no-verify --allow-dirty --quiet
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for crate in framepack framepack-core framepack-models framepack-sampling; do
  tar -xzf "$target/package/$crate-$version.crate" -C "$scratch"
done
mkdir -p "$scratch/app/src"
cat > "$scratch/app/Cargo.toml" <<TOML
[package]
name = "framepack-package-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
framepack = { path = "../framepack-$version" }

[patch.crates-io]
framepack-core = { path = "../framepack-core-$version" }
framepack-models = { path = "../framepack-models-$version" }
framepack-sampling = { path = "../framepack-sampling-$version" }

[profile.dev.package."*"]
opt-level = 2
debug = false
TOML
# The README's library example, as a downstream crate writes it.
sed -n '/^<!-- library example -->$/,/^```$/p' README.md | sed '1,2d;$d' > "$scratch/app/src/main.rs"
[ -s "$scratch/app/src/main.rs" ] || { echo "package check: no library example in README.md"; exit 1; }
# The workspace's lock keeps every dependency at the version the tests used.
cp Cargo.lock "$scratch/app/Cargo.lock"
cd "$scratch/app"
# The workspace's target folder: the dependencies built for the tests are reused (same
# versions, features and profile), only the four packaged crates compile again.
CARGO_TARGET_DIR="$target" cargo run --quiet
echo "package check: 1 passed, 0 failed"
