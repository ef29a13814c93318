"""Run untrusted Python in a throwaway bubblewrap sandbox: `run_python(code, stdin=...)`.

Each call starts a fresh sandbox (Debian package `bubblewrap`, from `make system-deps`):

- Namespaces: `--unshare-all --unshare-user --disable-userns`: an empty network namespace (no
  network at all, not even the host's loopback), own pid, ipc, uts, cgroup and user namespaces,
  no nested user namespaces. Inside, the program runs as uid/gid 65534 with no capabilities,
  as pid 1 of its pid namespace (`--as-pid-1`: with a bwrap init as pid 1 instead, bwrap
  would exit without reaping that init, leaving a zombie per run to the host's pid 1, which
  in a container may never reap it). So the kernel ignores signals it sends itself that it
  does not handle, and its orphans are not reaped (they die with the sandbox).
  When the caller is root, bwrap itself is started as host uid/gid 65534 (nobody), through
  `setpriv`: a sandbox uid mapped to host root is exempt from RLIMIT_NPROC, so a fork bomb would
  not be bounded.
- Files: read-only `/usr` plus the `/lib*` loader paths (symlinks on merged-/usr systems), a
  fresh `/proc` and minimal `/dev`, and a private 64 MiB tmpfs `/tmp` holding the program as
  `/tmp/main.py` (its cwd). `/` and `/dev` are remounted read-only, so `/tmp` is the only
  writable place. Nothing else of the host is visible: no `/etc`, `/root`, `/home`, `/work`.
- Interpreter: the system `/usr/bin/python3` (Debian `python3`), not the venv's: the venv's
  base interpreter may live under the caller's home (pyenv: `/root/.pyenv`), which must stay
  hidden, and the system one sees no project packages.
- Environment: `--clearenv` gives the program only PATH, LANG, PYTHONDONTWRITEBYTECODE and
  PYTHONHASHSEED, and bwrap itself gets no more (should a bwrap process ever be visible in
  the sandbox, its `/proc/PID/environ` would show the caller's variables).
- Limits, set by `prlimit` inside the sandbox just before the interpreter starts: address space
  `memory_mb`, CPU time ceil(timeout_s) + 1 s, 16 processes (threads included; counted per
  sandbox, as each has its own user namespace), 8 MiB per written file, no core dumps.
- Wall clock: after `timeout_s` the program gets SIGKILL; as pid 1 of its pid namespace, its
  death kills every other process there (double-forked daemons too). bwrap waits for it, and
  `run_python` returns only once all are gone. The same happens when the program exits by
  itself. Should the caller die, `--die-with-parent` takes the sandbox down too.
- Output: stdout and stderr are read in chunks and kept up to `max_output_bytes` each; a
  program writing more is killed at once and its result marked `output_truncated`.

Sandboxes share nothing, so any number run concurrently (no lock): call `run_python` from a
thread pool. Measured with `python -m envs.sandbox --bench` (a `print(1)` program) on
2026-11-22, on a 2-core x86_64 VM (Debian 12, kernel 6.18, bubblewrap 0.8.0, Python 3.11.2),
at `nice -n 19` while other jobs kept both cores busy (load average 3-5), so these are lower
bounds on throughput:

    one run at a time:       mean wall 32-39 ms per run (50 runs)
    thread pool, 2 workers:  63-64 programs/s
    thread pool, 8 workers:  95-98 programs/s

Of a run, starting the interpreter takes ~17 ms and bwrap's namespaces and mounts ~15 ms
(measured alone); more workers than cores help because much of a start-up is waiting. The caller's
size matters as well: Python spawns with vfork unless it is asked to change the user (hence
`setpriv` for a root caller), and a fork of a training process holding 1.2 GB cost 55 ms per run
(one run at a time, from that process, as root: 86 ms per run with Popen's `user=`, 22 ms with
`setpriv`; 2026-12-04, idle machine).

Without a working bwrap (not installed, or user namespaces disabled), `run_python` raises
`SandboxUnavailable`, unless `allow_unsandboxed=True` or the environment variable
`RL_VF_UNSANDBOXED=1`: then the program runs as the calling user with the same rlimits but no
isolation at all (it can read and write your files and use the network; as root, the process
limit does not apply), with a loud warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

BWRAP = shutil.which("bwrap")
PYTHON = "/usr/bin/python3"
INSTALL_HINT = "run `make system-deps` (or `apt-get install bubblewrap python3`)"
SANDBOX_ID = 65534  # nobody / nogroup
MAX_PROCESSES = 16
MAX_FILE_BYTES = 8 << 20
TMP_BYTES = 64 << 20
PROGRAM_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


class SandboxUnavailable(RuntimeError):
    """bubblewrap cannot run here; the message names the cause and the fix."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    returncode: int  # killed by signal N: 128 + N (bwrap's way), -N unsandboxed
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    output_truncated: bool
    sandboxed: bool

    @property
    def ok(self) -> bool:
        """The program ran to completion within its limits and exited with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.output_truncated


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    max_output_bytes: int = 65536,
    allow_unsandboxed: bool = False,
) -> SandboxResult:
    """Run the Python program `code` in a fresh sandbox with `stdin` as its standard input.

    Never raises for anything the program does; raises `SandboxUnavailable` when bwrap cannot
    run and unsandboxed runs are not allowed (see the module docstring).
    """
    if not timeout_s > 0 or memory_mb < 16 or max_output_bytes < 0:
        raise ValueError(
            f"timeout_s={timeout_s!r}, memory_mb={memory_mb!r}, max_output_bytes="
            f"{max_output_bytes!r}: need timeout_s > 0, memory_mb >= 16, max_output_bytes >= 0"
        )
    error = sandbox_error(BWRAP)
    if error is None:
        return _run(code, stdin, timeout_s, memory_mb, max_output_bytes, BWRAP)
    if not (allow_unsandboxed or os.environ.get("RL_VF_UNSANDBOXED") == "1"):
        raise SandboxUnavailable(error)
    _warn_unsandboxed(error)
    return _run(code, stdin, timeout_s, memory_mb, max_output_bytes, None)


@functools.cache
def sandbox_error(bwrap: str | None) -> str | None:
    """Why the sandbox cannot run with this bwrap binary, or None when it works (probed once)."""
    if bwrap is None or not os.access(bwrap, os.X_OK):
        cause = "bubblewrap (bwrap) is not installed"
    elif not os.access(PYTHON, os.X_OK):
        cause = f"{PYTHON} (the sandbox's interpreter) is missing"
    elif os.geteuid() == 0 and shutil.which("setpriv") is None:
        cause = "setpriv (util-linux), which drops root before bwrap, is not installed"
    else:
        result = _run("print(1)", "", 10.0, 256, 4096, bwrap)
        if result.stdout == "1\n":
            return None
        cause = f"{bwrap} failed (status {result.returncode}): {result.stderr.strip()!r}"
        if "namespace" in result.stderr:
            cause += (
                " (unprivileged user namespaces are disabled: e.g. sysctl"
                " kernel.unprivileged_userns_clone=1, or on Ubuntu"
                " kernel.apparmor_restrict_unprivileged_userns=0; in Docker, a seccomp profile"
                " that allows them)"
            )
    return (
        f"cannot sandbox untrusted code: {cause}. Fix: {INSTALL_HINT}; or, only where running "
        "untrusted code unconfined is acceptable, pass allow_unsandboxed=True or set "
        "RL_VF_UNSANDBOXED=1"
    )


def _bwrap_argv(bwrap: str) -> list[str]:
    argv = [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--new-session", "--as-pid-1", "--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID),
        "--ro-bind", "/usr", "/usr",
    ]
    for path in ("/lib", "/lib32", "/lib64", "/libx32"):  # the ELF loader and libraries
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    argv += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for name, value in PROGRAM_ENV.items():
        argv += ["--setenv", name, value]
    return argv


def _limits(timeout_s: float, memory_mb: int) -> list[str]:
    """The `prlimit` command prefix that sets the program's rlimits, then runs it."""
    return [
        "prlimit",
        f"--as={memory_mb << 20}",
        f"--cpu={math.ceil(timeout_s) + 1}",
        f"--nproc={MAX_PROCESSES}",
        f"--fsize={MAX_FILE_BYTES}",
        "--core=0",
        "--",
    ]


def _run(code, stdin, timeout_s, memory_mb, max_bytes, bwrap) -> SandboxResult:
    """Run `code` inside bwrap, or unsandboxed (rlimits only) when `bwrap` is None."""
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        source = code.encode(errors="replace")  # a lone surrogate becomes "?"
        code_fd = _memfd("main.py", source)
        stdin_fd = _memfd("stdin", stdin.encode(errors="replace"))
        stack.callback(os.close, code_fd)
        stack.callback(os.close, stdin_fd)
        if bwrap:
            argv = _bwrap_argv(bwrap)
            argv += ["--perms", "0444", "--ro-bind-data", str(code_fd), "/tmp/main.py"]
            argv += [*_limits(timeout_s, memory_mb), PYTHON, "/tmp/main.py"]
            cwd = "/"
            if os.geteuid() == 0:
                # Drop root before bwrap with setpriv rather than Popen's user/group arguments: with
                # those, Python forks instead of using vfork, and forking a training process of a
                # gigabyte or more cost 55 ms of page-table copying per program.
                argv = ["setpriv", f"--reuid={SANDBOX_ID}", f"--regid={SANDBOX_ID}", "--clear-groups", *argv]
        else:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="rl_vf_unsandboxed_"))
            Path(cwd, "main.py").write_bytes(source)
            argv = [*_limits(timeout_s, memory_mb), sys.executable, "main.py"]
        proc = subprocess.Popen(
            argv, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(code_fd,) if bwrap else (), cwd=cwd, env=PROGRAM_ENV,
            start_new_session=True,
        )
        stdout, stderr, timed_out, truncated = _collect(
            proc, start + timeout_s, max_bytes, sandboxed=bool(bwrap)
        )
    return SandboxResult(
        returncode=proc.returncode,
        stdout=stdout.decode(errors="replace"),
        stderr=stderr.decode(errors="replace"),
        timed_out=timed_out,
        wall_s=time.monotonic() - start,
        output_truncated=truncated,
        sandboxed=bool(bwrap),
    )


def _memfd(name: str, data: bytes) -> int:
    """A file descriptor of an in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(name)
    os.write(fd, data)  # a memfd takes any size in one write
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(proc: subprocess.Popen, deadline: float, max_bytes: int, sandboxed: bool):
    """(stdout, stderr, timed_out, truncated) of `proc`, which is killed on either limit."""
    output = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as selector:
        for stream in output:
            selector.register(stream, selectors.EVENT_READ)
        _read(selector, output, deadline, max_bytes, stop_when_full=True)
        truncated = any(len(buffer) > max_bytes for buffer in output.values())
        timed_out = not truncated and bool(selector.get_map())
        if not (timed_out or truncated):
            try:  # the program may have closed its output and gone on running
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if proc.poll() is None:
            _kill(proc, sandboxed)
        proc.wait()
        # Also drain what the sandbox's processes wrote before their pipes closed.
        _read(selector, output, time.monotonic() + 1.0, max_bytes, stop_when_full=False)
    proc.stdout.close()
    proc.stderr.close()
    return (*(bytes(buffer[:max_bytes]) for buffer in output.values()), timed_out, truncated)


def _kill(proc: subprocess.Popen, sandboxed: bool) -> None:
    """Kill the program and every process it started; return once they are gone (or 1 s on).

    Sandboxed, SIGKILL goes to the program (bwrap's child, pid 1 of its namespace): the
    kernel then kills every other process of the namespace and lets the program finish
    exiting only after them; bwrap reaps it and exits. Unsandboxed, SIGKILL goes to the
    process group (a process that left the group survives).
    """
    if sandboxed:
        try:  # while bwrap lives, its child's pid cannot be reused
            for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:  # bwrap or its child exited meanwhile
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1.0)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _read(selector, output: dict, deadline: float, max_bytes: int, stop_when_full: bool) -> None:
    """Read the streams into `output` (at most max_bytes + 1 bytes each) until they close or
    `deadline` passes, or, with `stop_when_full`, until one has more than `max_bytes`."""
    while selector.get_map() and time.monotonic() < deadline:
        if stop_when_full and any(len(buffer) > max_bytes for buffer in output.values()):
            return
        for key, _ in selector.select(deadline - time.monotonic()):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
            buffer = output[key.fileobj]
            buffer += chunk[: max_bytes + 1 - len(buffer)]


_warned = False


def _warn_unsandboxed(error: str) -> None:
    global _warned
    message = f"RUNNING UNTRUSTED CODE WITHOUT A SANDBOX (rlimits only): {error}"
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    if not _warned:
        _warned = True
        print(f"WARNING: {message}", file=sys.stderr)


def _bench(runs: int = 50) -> None:
    from concurrent.futures import ThreadPoolExecutor

    run_python("print(1)")  # the probe
    walls = [run_python("print(1)").wall_s for _ in range(runs)]
    mean_ms = 1000 * sum(walls) / runs
    print(f"one run at a time:       mean wall {mean_ms:.0f} ms per run ({runs} runs)")
    for workers in (2, 8):
        with ThreadPoolExecutor(workers) as pool:
            start = time.monotonic()
            results = list(pool.map(lambda _: run_python("print(1)"), range(4 * runs)))
            rate = len(results) / (time.monotonic() - start)
        assert all(result.stdout == "1\n" for result in results)
        print(f"thread pool, {workers} workers:  {rate:.0f} programs/s")


if __name__ == "__main__":
    if sys.argv[1:] != ["--bench"]:
        sys.exit("usage: python -m envs.sandbox --bench")
    _bench()
