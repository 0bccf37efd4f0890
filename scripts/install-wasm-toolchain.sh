#!/usr/bin/env bash
# Make sure a wasm32 Rust toolchain exists for building stages.
#
# Required: a toolchain that emits core modules, which wasmpipe componentizes:
# 1. rustup's wasm32-unknown-unknown target (installed when rustup can fetch it);
# 2. offline fallback: Debian's packaged Rust, whose std is built from source
#    by `wasmpipe build` (-Zbuild-std): rustc-web cargo-web rust-web-src lld-16.
# Best effort: rustup's wasm32-wasip2 target, which emits components that
# import WASI; wasmpipe prefers it where present (host/toolchain).
set -euo pipefail

have_target() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$1"
}

have_debian() {
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] &&
        [ -f "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library/Cargo.lock" ] &&
        { command -v wasm-ld-16 >/dev/null 2>&1 || command -v wasm-ld >/dev/null 2>&1; }
}

if command -v rustup >/dev/null 2>&1; then
    for target in wasm32-unknown-unknown wasm32-wasip2; do
        have_target "$target" || timeout 120 rustup target add "$target" ||
            echo "rustup could not install $target"
    done
fi
if have_target wasm32-unknown-unknown; then
    echo "wasm32 toolchain: rustup target wasm32-unknown-unknown"
    exit 0
fi
if have_debian; then
    echo "wasm32 toolchain: Debian rustc-web with -Zbuild-std"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rustc-web cargo-web rust-web-src lld-16 >/dev/null
    if have_debian; then
        echo "wasm32 toolchain: Debian rustc-web with -Zbuild-std"
        exit 0
    fi
fi
echo "error: no wasm32 toolchain could be installed." >&2
echo "  install rustup (https://rustup.rs) and run: rustup target add wasm32-unknown-unknown" >&2
exit 1
