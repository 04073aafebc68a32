#!/usr/bin/env bash
# Footprint of each firmware: flash = .text + .rodata, static RAM = .data +
# .bss (as docs/device.md reports them), from the release ELFs, with GNU
# size (Debian's binutils reads ARM ELF files) or llvm-size.
# Usage: ./size.sh  (after `cargo build --release`)
set -euo pipefail
cd "$(dirname "$0")"
size_tool=$(command -v size || command -v llvm-size)
printf '%-18s %10s %10s %10s %10s %12s %12s\n' firmware .text .rodata .data .bss flash ram
for bin in baseline minimal minimal-tls ferrolink-pico-w; do
  elf=target/thumbv6m-none-eabi/release/$bin
  "$size_tool" -A "$elf" | awk -v name="$bin" '
    $1 == ".text" { t = $2 } $1 == ".rodata" { r = $2 }
    $1 == ".data" { d = $2 } $1 == ".bss" { b = $2 }
    END { printf "%-18s %10d %10d %10d %10d %12d %12d\n", name, t, r, d, b, t + r, d + b }'
done
