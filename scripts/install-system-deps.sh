#!/usr/bin/env bash
# Optional system packages for the chess envs (Debian/Ubuntu): the Stockfish engine
# (/usr/games/stockfish, the Chess-v0 opponent and a demonstrator) and the 3-piece Gaviota
# endgame tablebases (/usr/share/gaviotatb/gtb4/*.gtb.cp4, ChessEndgame-v0's ground truth).
# Without them the chess envs still work, with random opponents and no tablebase info.
# And bubblewrap (bwrap) with the system python3, the sandbox (envs/sandbox.py) that runs
# CodeFunction-v0's programs: without it that env refuses to run code.
# Idempotent: when all are installed already, it touches neither apt nor the network.
set -euo pipefail

PACKAGES=(stockfish gaviotatb bubblewrap python3)

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null) || true
    [ "$status" = installed ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

skip() {
    echo "install-system-deps: $1; skipping the optional ${missing[*]}" \
        "(the chess envs run without them: no Stockfish opponent, no tablebase info;" \
        "CodeFunction-v0 needs bubblewrap)." >&2
    exit 0
}

command -v apt-get >/dev/null || skip "apt-get not found (not Debian/Ubuntu)"
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    skip "not root and no password-less sudo (as root, run: apt-get install ${missing[*]})"
fi

echo "install-system-deps: installing ${missing[*]} with apt-get"
{ "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
    skip "apt-get could not install ${missing[*]}"
