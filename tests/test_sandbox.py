"""The code sandbox: correct code scores 1, and every escape is contained, scored 0, and leaves the host unchanged."""
import os
import socket
import time

from fedalign_lite.objectives.sandbox import run_tests

TESTS = [(2, 4), (3, 6)]


def test_correct_and_wrong_code_are_scored():
    assert run_tests("def f(x):\n    return 2 * x", "f", TESTS).score == 1.0
    wrong = run_tests("def f(x):\n    return x + 1", "f", TESTS)
    assert wrong.score == 0.0 and wrong.passed == 0 and wrong.status == "ok"
    half = run_tests("def f(x):\n    return 4 if x == 2 else 0", "f", TESTS)
    assert half.passed == 1 and half.score == 0.0


def test_syntax_errors_and_missing_functions_score_zero():
    assert run_tests("def f(x) return", "f", TESTS).status.startswith("error: SyntaxError")
    assert run_tests("def g(x):\n    return 2 * x", "f", TESTS).score == 0.0


def test_infinite_loop_is_killed_at_the_wall_clock():
    t0 = time.perf_counter()
    r = run_tests("def f(x):\n    while True:\n        pass", "f", TESTS, timeout_s=1.5, cpu_s=10)
    assert r.status == "timeout" and r.score == 0.0
    assert time.perf_counter() - t0 < 10


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    r = run_tests("def f(x):\n    while True:\n        pass", "f", TESTS, timeout_s=30, cpu_s=1)
    assert r.score == 0.0 and r.status in ("crashed", "timeout")


def test_fork_bomb_is_refused():
    code = "import os\ndef f(x):\n    while True:\n        os.fork()"
    r = run_tests(code, "f", TESTS, timeout_s=5)
    assert r.score == 0.0
    code = "import subprocess\nsubprocess.run(['sleep', '100'])\ndef f(x):\n    return 2 * x"
    assert run_tests(code, "f", TESTS).status.startswith("error: PermissionError")


def test_huge_allocation_fails_inside_the_limit():
    r = run_tests("def f(x):\n    return len(bytearray(8 * 1024 ** 3)) and 2 * x", "f", TESTS, memory_mb=256)
    assert r.score == 0.0


def test_files_outside_the_sandbox_are_untouched(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    for code in (f"import os\nos.remove({str(victim)!r})\ndef f(x):\n    return 2 * x",
                 f"open({str(victim)!r}, 'w').write('gone')\ndef f(x):\n    return 2 * x",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})\ndef f(x):\n    return 2 * x",
                 f"open({str(tmp_path / 'new.txt')!r}, 'x').write('x')\ndef f(x):\n    return 2 * x",
                 f"import os\nos.rename({str(victim)!r}, 'stolen')\ndef f(x):\n    return 2 * x"):
        r = run_tests(code, "f", TESTS)
        assert r.score == 0.0 and r.status.startswith("error: PermissionError"), code
    assert victim.read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["keep.txt"]


def test_writing_inside_the_sandbox_works_and_is_cleaned_up(tmp_path):
    before = set(os.listdir("/tmp"))
    code = "open('scratch.txt', 'w').write('ok')\ndef f(x):\n    return 2 * x if open('scratch.txt').read() == 'ok' else 0"
    assert run_tests(code, "f", TESTS).score == 1.0
    assert not [d for d in set(os.listdir("/tmp")) - before if d.startswith("fedalign-sandbox-")]


def test_sockets_are_refused():
    code = "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\ndef f(x):\n    return 2 * x"
    r = run_tests(code, "f", TESTS)
    assert r.score == 0.0 and "socket" in r.status
    assert socket.socket  # the host's socket module is untouched


def test_ctypes_escape_is_refused():
    code = "import ctypes\nctypes.CDLL(None).fork()\ndef f(x):\n    return 2 * x"
    assert run_tests(code, "f", TESTS).score == 0.0
