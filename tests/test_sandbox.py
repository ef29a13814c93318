import os
import re
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from envs import sandbox
from envs.sandbox import SandboxUnavailable, run_python

REPO = Path(__file__).resolve().parents[1]
SANDBOX_ERROR = sandbox.sandbox_error(sandbox.BWRAP)
needs_bwrap = pytest.mark.skipif(
    SANDBOX_ERROR is not None, reason=f"bubblewrap sandbox unavailable: {SANDBOX_ERROR}"
)


def host_processes() -> dict[int, tuple[str, str, int]]:
    """{pid: (command line, name, real uid)} of every process, zombies included (their
    command line is empty)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = (proc / "stat").read_text()
            uid = int(re.search(r"^Uid:\s+(\d+)", (proc / "status").read_text(), re.M)[1])
        except OSError:  # exited meanwhile
            continue
        found[int(proc.name)] = (cmdline, stat[stat.index("(") + 1 : stat.rindex(")")], uid)
    return found


def processes_matching(needle: str) -> set[int]:
    return {pid for pid, (cmdline, _, _) in host_processes().items() if needle in cmdline}


def sandbox_processes() -> set[int]:
    """bwrap and the sandboxed programs; as root also anything running as nobody (65534), the
    host uid of the sandbox's processes then."""
    return {
        pid for pid, (cmdline, name, uid) in host_processes().items()
        if "/tmp/main.py" in cmdline or name == "bwrap" or (uid == 65534 and os.geteuid() == 0)
    }


@pytest.fixture(autouse=True)
def no_leftovers():
    """Fails any test that leaves sandbox processes behind. A new one is a leftover only if it is still
    there a second later: sandboxes of another program on the machine (a CodeFunction training run)
    come and go within milliseconds."""
    before = sandbox_processes()
    yield
    leftover = sandbox_processes() - before
    if leftover:
        time.sleep(1.0)
        leftover &= sandbox_processes()
    assert not leftover


@needs_bwrap
def test_honest_program_passes_quickly():
    code = "import sys\nnumbers = [int(t) for t in sys.stdin.read().split()]\nprint(sum(numbers))\n"
    result = run_python(code, stdin="1 2 3 40\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "46\n", "")
    assert result.ok and result.sandboxed and not result.timed_out and not result.output_truncated
    assert result.wall_s < 1.0


@needs_bwrap
def test_errors_are_reported_not_raised():
    result = run_python("def f(:\n")
    assert result.returncode == 1 and "SyntaxError" in result.stderr and not result.ok
    result = run_python("print('\\ud800' + 'ok')")  # a lone surrogate cannot even be printed
    assert result.returncode == 1 and "UnicodeEncodeError" in result.stderr


@needs_bwrap
def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.timed_out and not result.ok and result.returncode != 0
    assert result.wall_s < 2.0


@needs_bwrap
def test_closing_output_does_not_escape_the_timeout():
    code = "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n"
    result = run_python(code, timeout_s=0.5)
    assert result.timed_out and result.wall_s < 1.5


@needs_bwrap
def test_fork_bomb_is_bounded_and_leaves_nothing():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_python(code, timeout_s=1.0)
    assert result.timed_out and result.wall_s < 2.0


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0, reason="root drops to nobody before bwrap; others run it as themselves")
def test_a_root_caller_starts_the_sandbox_as_nobody():
    """bwrap and the program run as host uid 65534, not root (a root-mapped sandbox would not count
    its processes against RLIMIT_NPROC)."""
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_python, "import time\ntime.sleep(1.0)\nprint('done')", timeout_s=5.0)
        seen = {}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not ({"bwrap", "main"} <= seen.keys()):
            for cmdline, name, uid in host_processes().values():
                if name == "bwrap" and "/tmp/main.py" in cmdline:
                    seen["bwrap"] = uid
                elif cmdline.startswith(sandbox.PYTHON) and "/tmp/main.py" in cmdline:
                    seen["main"] = uid
            time.sleep(0.05)
        assert running.result().stdout == "done\n"
    assert seen == {"bwrap": 65534, "main": 65534}


@needs_bwrap
def test_process_limit_is_per_sandbox():
    # 4 sandboxes at once, each with 8 children: over the limit of 16 only if counted jointly.
    code = (
        "import os, time\npids = []\nfor _ in range(8):\n    pid = os.fork()\n"
        "    if pid == 0:\n        time.sleep(0.5)\n        os._exit(0)\n    pids.append(pid)\n"
        "for pid in pids:\n    os.waitpid(pid, 0)\nprint('ok')\n"
    )
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run_python(code, timeout_s=5.0), range(4)))
    assert [result.stdout for result in results] == ["ok\n"] * 4


@needs_bwrap
def test_memory_bomb_fails():
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n"
    result = run_python(code, memory_mb=128)
    assert result.returncode != 0 and not result.timed_out and "MemoryError" in result.stderr
    result = run_python("x = bytearray(10**11)\n")
    assert result.returncode != 0 and "MemoryError" in result.stderr


@needs_bwrap
def test_gigantic_output_is_truncated_fast():
    result = run_python("while True:\n    print('x' * 10000)\n", max_output_bytes=1000)
    assert result.output_truncated and not result.ok and len(result.stdout) == 1000
    assert result.wall_s < 1.0
    result = run_python("import sys\nsys.stderr.write('e' * 10**6)\n", max_output_bytes=100)
    assert result.output_truncated and result.stderr == "e" * 100


@needs_bwrap
def test_big_files_and_a_full_tmp_fail():
    code = "open('/tmp/big', 'wb').write(bytes(20 << 20))\n"  # over the 8 MiB file limit
    assert run_python(code).returncode != 0
    code = (  # 10 files of almost 8 MiB overfill the 64 MiB /tmp
        "for i in range(10):\n    open(f'/tmp/f{i}', 'wb').write(bytes((8 << 20) - 1))\n"
    )
    result = run_python(code, timeout_s=5.0)
    assert result.returncode != 0 and "No space left on device" in result.stderr


@needs_bwrap
def test_writes_outside_its_tmp_fail():
    name = f"rl_vf_escape_{uuid.uuid4().hex}"
    targets = ["/usr", "/", "/dev", "/dev/shm", "/etc", str(REPO), "/root", "/home"]
    code = (
        f"for folder in {targets!r}:\n"
        "    try:\n"
        f"        open(folder + '/{name}', 'w').write('x')\n"
        "        print('wrote', folder)\n"
        "    except OSError:\n"
        "        pass\n"
        f"open('/tmp/{name}', 'w').write('x')\n"
        "print('tmp ok')\n"
    )
    result = run_python(code)
    assert result.stdout == "tmp ok\n", result
    for folder in [*targets, "/tmp"]:
        assert not Path(folder, name).exists()


@needs_bwrap
def test_host_environment_and_files_are_hidden(monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("RL_VF_TEST_SECRET", secret)
    hidden = [str(REPO / "pyproject.toml"), "/root", "/home", "/work", "/etc/passwd"]
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        f"for path in {hidden!r}:\n"
        "    print(path, os.path.exists(path))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result
    assert secret not in result.stdout and "RL_VF_TEST_SECRET" not in result.stdout
    for path in hidden:
        assert f"{path} False" in result.stdout


@needs_bwrap
def test_no_network_not_even_the_host_loopback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('connected')\n"
            "except OSError as error:\n"
            "    print('failed', error)\n"
        )
        result = run_python(code)
        assert result.stdout.startswith("failed"), result
        with pytest.raises(BlockingIOError):  # the listener saw no connection
            listener.accept()


@needs_bwrap
def test_killing_its_parent_or_init_harms_nobody_outside():
    code = (
        "import os\n"
        f"for pid in ({os.getpid()}, {os.getppid()}, 1, -1, os.getppid()):\n"
        "    try:\n"
        "        os.kill(pid, 9)\n"
        "        print(pid, 'sent', flush=True)\n"
        "    except OSError as error:\n"
        "        print(pid, type(error).__name__, flush=True)\n"
    )
    result = run_python(code)
    # The sandbox sees only its own pid namespace: the host's pids do not exist there, the
    # program is alone (kill(-1) finds nobody) and is pid 1, so the kernel drops the SIGKILLs
    # it sends itself (to pid 1, and to its own process group: pid 0; its parent is outside).
    assert result.stdout == (
        f"{os.getpid()} ProcessLookupError\n{os.getppid()} ProcessLookupError\n"
        "1 sent\n-1 ProcessLookupError\n0 sent\n"
    ), result
    assert result.returncode == 0
    assert os.getppid() != 1  # the test process and its parent live on


@needs_bwrap
def test_background_process_dies_with_the_run():
    marker = f"rl_vf_daemon_{uuid.uuid4().hex}"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/usr/bin/python3', ['python3', '-c', 'import time; time.sleep(0.5); "
        f"open(\"/tmp/{marker}\", \"w\"); time.sleep(30)', '{marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )
    result = run_python(code)
    assert result.stdout == "parent done\n" and result.wall_s < 1.5, result
    assert not processes_matching(marker)
    time.sleep(0.6)  # when the daemon would have written (into the sandbox's own /tmp)
    assert not processes_matching(marker) and not Path("/tmp", marker).exists()


@needs_bwrap
def test_runs_concurrently():
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = [f"import time\ntime.sleep(0.5)\nprint({i})" for i in range(8)]
        results = list(pool.map(run_python, codes))
    assert [result.stdout for result in results] == [f"{i}\n" for i in range(8)]
    assert time.monotonic() - start < 2.5  # serialised, it would take more than 4 s


def test_unavailable_sandbox_is_refused(monkeypatch):
    monkeypatch.delenv("RL_VF_UNSANDBOXED", raising=False)
    monkeypatch.setattr(sandbox, "BWRAP", None)
    message = "bubblewrap .bwrap. is not installed.*make system-deps"
    with pytest.raises(SandboxUnavailable, match=message):
        run_python("print(1)")


def test_failing_bwrap_is_refused_with_its_error(monkeypatch):
    monkeypatch.delenv("RL_VF_UNSANDBOXED", raising=False)
    monkeypatch.setattr(sandbox, "BWRAP", "/bin/false")
    message = "/bin/false failed .status 1.*apt-get install bubblewrap"
    with pytest.raises(SandboxUnavailable, match=message):
        run_python("print(1)")


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root caller needs setpriv")
def test_a_root_caller_without_setpriv_is_refused(monkeypatch):
    monkeypatch.delenv("RL_VF_UNSANDBOXED", raising=False)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.sandbox_error.cache_clear()  # probed once per bwrap path
    try:
        with pytest.raises(SandboxUnavailable, match="setpriv .util-linux.*is not installed"):
            run_python("print(1)")
    finally:
        sandbox.sandbox_error.cache_clear()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_unsandboxed_runs_with_a_warning(monkeypatch, capsys, how):
    monkeypatch.setattr(sandbox, "BWRAP", None)
    monkeypatch.setattr(sandbox, "_warned", False)
    if how == "environment":
        monkeypatch.setenv("RL_VF_UNSANDBOXED", "1")
    with pytest.warns(RuntimeWarning, match="WITHOUT A SANDBOX"):
        allow = how == "argument"
        result = run_python("print(input()[::-1])", stdin="abc", allow_unsandboxed=allow)
    assert (result.returncode, result.stdout, result.sandboxed) == (0, "cba\n", False)
    assert "WITHOUT A SANDBOX" in capsys.readouterr().err
    with pytest.warns(RuntimeWarning):
        result = run_python("while True:\n    pass\n", timeout_s=0.5, allow_unsandboxed=True)
    assert result.timed_out and result.wall_s < 1.5
    assert "WITHOUT A SANDBOX" not in capsys.readouterr().err  # printed once per process


@pytest.mark.parametrize(
    "kwargs, bad", [(dict(timeout_s=0), "timeout_s=0"), (dict(memory_mb=1), "memory_mb=1")]
)
def test_bad_arguments_raise(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        run_python("print(1)", **kwargs)
