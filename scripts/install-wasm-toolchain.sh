#!/usr/bin/env bash
# Make sure a wasm32 Rust toolchain exists for building stages.
#
# 1. rustup with wasm32-wasip2 or wasm32-unknown-unknown already installed: done.
# 2. `rustup target add wasm32-unknown-unknown` (needs the rustup server).
# 3. Offline fallback: Debian's packaged Rust, whose std is built from source
#    by `wasmpipe build` (-Zbuild-std): rustc-web cargo-web rust-web-src lld-16.
#
# `wasmpipe build` detects whichever is present (host/toolchain).
set -euo pipefail

have_target() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qE '^wasm32-(wasip2|unknown-unknown)$'
}

have_debian() {
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] &&
        [ -f "$(/usr/bin/rustc --print sysroot)/lib/rustlib/src/rust/library/Cargo.lock" ] &&
        { command -v wasm-ld-16 >/dev/null 2>&1 || command -v wasm-ld >/dev/null 2>&1; }
}

if have_target; then
    echo "wasm32 toolchain: rustup target $(rustup target list --installed | grep -E '^wasm32-' | head -n1)"
    exit 0
fi
if have_debian; then
    echo "wasm32 toolchain: Debian rustc-web with -Zbuild-std"
    exit 0
fi
if command -v rustup >/dev/null 2>&1; then
    echo "installing the wasm32-unknown-unknown target with rustup..."
    if timeout 300 rustup target add wasm32-unknown-unknown && have_target; then
        exit 0
    fi
    echo "rustup could not install the target; trying Debian's packaged toolchain"
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
