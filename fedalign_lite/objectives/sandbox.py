"""Run model-generated code against its tests in a contained subprocess, and score it.

Layers, each covering what the others might miss:

* a fresh ``python -I`` in its own session and a temporary working directory, removed afterwards;
* resource limits: CPU seconds, address space (memory), file size, and a process count where the
  kernel enforces it (not for root);
* a wall-clock timeout that kills the whole process group;
* a PEP 578 audit hook, installed before the code runs and impossible to remove from Python, that
  refuses sockets, process creation (fork, exec, subprocess, os.system), ctypes, and any write,
  delete, rename or mkdir outside the temporary directory.

The hook is an in-process guard, not an OS sandbox: it is what makes the common escapes fail
cleanly and be scored 0. Containers or seccomp are the next layer for untrusted code at scale.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from fedalign_lite.errors import check_positive

_RUNNER = r'''
import json, os, sys
job = json.loads(sys.stdin.read())
root = os.path.realpath(os.getcwd())

def inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else root)
    except Exception:
        return False
    return p == root or p.startswith(root + os.sep)

BLOCKED = ("socket.", "subprocess.", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
           "os.spawn", "os.kill", "os.killpg", "ctypes.", "pty.", "os.setuid", "os.chroot", "resource.setrlimit")
WRITES = ("os.remove", "os.unlink", "os.rmdir", "os.rename", "os.replace", "os.mkdir", "os.chmod", "os.chown",
          "os.link", "os.symlink", "os.truncate", "shutil.rmtree", "shutil.copyfile", "shutil.move")

def hook(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event in WRITES and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
        raise PermissionError(f"sandbox: {event} outside the sandbox directory")
    if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+") and not inside(args[0]):
        raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")
    if event == "open" and args[1] is None and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not inside(args[0]):
        raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox directory")

sys.addaudithook(hook)
namespace = {"__name__": "__sandbox__"}
passed = 0
try:
    exec(compile(job["code"], "<generated>", "exec"), namespace)
    fn = namespace[job["entry_point"]]
    for arg, expected in job["tests"]:
        try:
            passed += fn(arg) == expected
        except Exception:
            pass
except BaseException as e:
    print(json.dumps({"passed": 0, "error": f"{type(e).__name__}: {e}"[:300]}))
    sys.exit(0)
print(json.dumps({"passed": int(passed)}))
'''


@dataclass(frozen=True)
class SandboxResult:
    passed: int
    total: int
    status: str          # "ok", "timeout", "crashed" or "error: <the exception the code raised>"

    @property
    def score(self) -> float:
        """1.0 when every test passes (pass@1 for this sample), else 0.0."""
        return float(self.total > 0 and self.passed == self.total)


def _limits(cpu_s: int, memory_mb: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))       # 1 MiB per file written
        if os.getuid() != 0:            # the kernel ignores RLIMIT_NPROC for root
            resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    return apply


def run_tests(code: str, entry_point: str, tests: list, *, timeout_s: float = 5.0, cpu_s: int = 2,
              memory_mb: int = 512) -> SandboxResult:
    """Run ``code``, then ``entry_point(arg) == expected`` for each ``(arg, expected)`` in ``tests``."""
    check_positive("timeout_s", timeout_s)
    check_positive("cpu_s", cpu_s, integer=True)
    check_positive("memory_mb", memory_mb, integer=True)
    workdir = tempfile.mkdtemp(prefix="fedalign-sandbox-")
    job = json.dumps({"code": code, "entry_point": entry_point, "tests": [list(t) for t in tests]})
    proc = subprocess.Popen([sys.executable, "-I", "-c", _RUNNER], cwd=workdir, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
                            start_new_session=True, preexec_fn=_limits(cpu_s, memory_mb))
    try:
        out, _ = proc.communicate(job.encode(), timeout=timeout_s)
        status = "ok"
    except subprocess.TimeoutExpired:
        out, status = b"", "timeout"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)     # the process and anything it started
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    if status == "timeout":
        return SandboxResult(0, len(tests), "timeout")
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        return SandboxResult(0, len(tests), "crashed")
    if "error" in result:
        return SandboxResult(0, len(tests), f"error: {result['error']}")
    return SandboxResult(int(result["passed"]), len(tests), "ok")
