#!/usr/bin/env bash
# What each addition costs the full firmware: builds `ferrolink-pico-w`
# with and without the `roughtime` and `trust-updates` features and prints
# flash (.text + .rodata) and static RAM (.data + .bss) of each, and the
# differences. Usage: ./size-variants.sh (a few minutes; the default build
# is left in target/ last).
set -euo pipefail
cd "$(dirname "$0")"
size_tool=$(command -v size || command -v llvm-size)
measure() {
  env -u CARGO_TARGET_DIR cargo build --release --locked --bin ferrolink-pico-w "$@" >/dev/null 2>&1
  "$size_tool" -A target/thumbv6m-none-eabi/release/ferrolink-pico-w | awk '
    $1 == ".text" { t = $2 } $1 == ".rodata" { r = $2 }
    $1 == ".data" { d = $2 } $1 == ".bss" { b = $2 }
    END { print t + r, d + b }'
}
read -r f0 r0 < <(measure --no-default-features --features p384)
read -r f1 r1 < <(measure --no-default-features --features p384,roughtime)
read -r f2 r2 < <(measure --no-default-features --features p384,trust-updates)
read -r f3 r3 < <(measure)
printf '%-34s %10s %10s %12s %10s\n' variant flash ram "flash +" "ram +"
printf '%-34s %10d %10d %12s %10s\n' "SNTP only, no trust updates" "$f0" "$r0" - -
printf '%-34s %10d %10d %12d %10d\n' "+ roughtime" "$f1" "$r1" $((f1 - f0)) $((r1 - r0))
printf '%-34s %10d %10d %12d %10d\n' "+ trust-updates" "$f2" "$r2" $((f2 - f0)) $((r2 - r0))
printf '%-34s %10d %10d %12d %10d\n' "+ both (default)" "$f3" "$r3" $((f3 - f0)) $((r3 - r0))
