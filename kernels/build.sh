#!/usr/bin/env bash
# Builds wasm/edgevit_kernels_relaxed.wasm (+simd128,+relaxed-simd) and
# wasm/edgevit_kernels_simd.wasm (+simd128) from this crate, reproducibly: the output is
# byte-identical whatever the checkout path (paths are remapped, panics carry no
# locations, and custom sections — names, producers, target features — are stripped).
# Needs Debian's rustc-web cargo-web rust-web-src lld, and deno; runs offline.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
out_dir="${1:-$root/wasm}"
mkdir -p "$out_dir"
# Custom sections are stripped with a small Deno script (binaryen 108 cannot parse the
# final relaxed-SIMD opcodes).
deno="$root/node_modules/.bin/deno"
[ -x "$deno" ] || deno="$(command -v deno)"

build() { # flavour features
  local flavour="$1" features="$2"
  local target_dir="$here/target/$flavour"
  (
    cd "$here"
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0 \
      RUSTFLAGS="-C target-feature=$features -C linker=wasm-ld -Z location-detail=none -Z fmt-debug=none --remap-path-prefix=$here=/edgevit/kernels --remap-path-prefix=$HOME=/home -C link-arg=--export=__heap_base -C link-arg=--export=__data_end" \
      /usr/bin/cargo build --release --offline --quiet --locked \
      --target wasm32-unknown-unknown -Z build-std=core,panic_abort \
      --target-dir "$target_dir"
  )
  "$deno" run --quiet --no-lock --no-config --allow-read --allow-write "$here/strip_custom_sections.ts" \
    "$target_dir/wasm32-unknown-unknown/release/edgevit_kernels.wasm" \
    "$out_dir/edgevit_kernels_$flavour.wasm"
}

build relaxed "+simd128,+relaxed-simd"
build simd "+simd128"
ls -l "$out_dir"/edgevit_kernels_*.wasm
