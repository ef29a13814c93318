"""A new user's first run of every env: time to the first finished update and peak memory.

Runs ``python -m rl_vf train --env ID --total-episodes 64`` at the env's defaults (plus ``--threads``)
for each env id, one at a time, stops it once ``metrics.jsonl`` holds its first update (or at
``--limit`` seconds), and prints a markdown table: wall seconds to the first update, CPU seconds of
the run until then, and the run's peak RSS (``ru_maxrss`` of the child, what ``/usr/bin/time -v``
reports as "Maximum resident set size"). The runs share a warm-start cache of their own that starts
empty, so the first run of an env with a warm start computes it, as on a fresh machine; ``--again``
runs each env a second time, which reuses it, as any later run with the same warm-start settings
(another arm of a comparison, another try) would.

    python experiments/first_update.py --threads 1 --envs TicTacToe-v0 ChessEndgame-v0
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import envs

ENV_IDS = list(envs.ENV_IDS)


def first_update(env_id: str, episodes: int, threads: int, limit: float, extra: list[str], cache: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="first-update-") as out:
        cmd = [sys.executable, "-m", "rl_vf", "train", "--env", env_id, "--total-episodes", str(episodes),
               "--threads", str(threads), "--wandb", "disabled", "--out", out, *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "RL_VF_CACHE": cache})
        metrics = os.path.join(out, "metrics.jsonl")
        seconds, ended = None, None
        while ended is None:  # wait4, not poll: this child's own usage, read when it is reaped
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                ended = os.waitstatus_to_exitcode(status)
            elif seconds is None and os.path.exists(metrics) and os.path.getsize(metrics) > 0:
                seconds = time.perf_counter() - t0
                proc.send_signal(signal.SIGKILL)  # the final evaluation is not part of the first update
            elif seconds is None and time.perf_counter() - t0 > limit:
                proc.send_signal(signal.SIGKILL)
            time.sleep(0.2)
        proc.returncode = ended
        if seconds is None and ended != -signal.SIGKILL:
            raise SystemExit(f"{env_id} failed with exit code {ended}; run {' '.join(cmd)} to see why")
    return {"env": env_id, "first_update_s": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_gb": usage.ru_maxrss / 2**20}  # ru_maxrss is in KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=ENV_IDS, metavar="ID", help="env ids (default: every registered one)")
    p.add_argument("--episodes", type=int, default=64, help="--total-episodes of each run (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    p.add_argument("--limit", type=float, default=900, help="give up on a run after this many seconds")
    p.add_argument("--again", action="store_true", help="run each env a second time, reusing its cached warm start")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more rl-vf train flags for every run")
    args = p.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    again = " | again: first update (s) | CPU s | peak RSS (GB)" if args.again else ""
    print(f"| env | first update (s, wall) | CPU s | peak RSS (GB){again} |  ({args.episodes} episodes, "
          f"--threads {args.threads})")
    print("|---|---:|---:|---:|" + ("---:|---:|---:|" if args.again else ""))
    with tempfile.TemporaryDirectory(prefix="first-update-cache-") as cache:
        for env_id in args.envs:
            runs = [first_update(env_id, args.episodes, args.threads, args.limit, extra, cache)
                    for _ in range(2 if args.again else 1)]
            print(f"| {env_id} | " + " | ".join(cells(r, args.limit) for r in runs) + " |", flush=True)


def cells(r: dict, limit: float) -> str:
    wall = f"{r['first_update_s']:.0f}" if r["first_update_s"] is not None else f"> {limit:.0f} (none)"
    return f"{wall} | {r['cpu_s']:.0f} | {r['peak_rss_gb']:.2f}"

if __name__ == "__main__":
    main()
