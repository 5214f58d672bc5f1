"""crema_jax/runtime/host_malloc.py: when the process re-executes itself, and that glibc then really
serves big allocations with huge pages (page faults counted by the kernel)."""
import os
import subprocess
import sys
import textwrap

import pytest

from crema_jax.runtime import host_malloc

GLIBC = (2, 36)


@pytest.mark.parametrize("environ, libc, thp, expected", [
    ({}, GLIBC, "madvise", "glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise",
     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", None),   # the user's choice
    ({"CREMA_JAX_HOST_MALLOC": "default"}, GLIBC, "madvise", None),           # opted out
    ({}, GLIBC, "always", None),       # every mapping is already huge
    ({}, GLIBC, "never", None),        # madvise cannot turn THP on
    ({}, GLIBC, None, None),           # no THP in this kernel
    ({}, (2, 34), "madvise", None),    # the tunable exists from glibc 2.35
    ({}, None, "madvise", None),       # musl, macOS, ...
])
def test_tunables_decision(environ, libc, thp, expected):
    assert host_malloc.tunables_with_hugetlb(environ, libc=libc, thp=thp) == expected


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_malloc.thp_mode(str(path)) == "madvise"
    assert host_malloc.thp_mode(str(tmp_path / "absent")) is None


CHILD = textwrap.dedent("""
    import os, sys
    print("start", os.getpid(), flush=True)
    from crema_jax.runtime import host_malloc
    host_malloc.reexec_with_hugetlb(thp_path=sys.argv[1])
    print("args", sys.argv[2:], "tunables", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
""")


def _run_child(tmp_path, thp_text, env_extra=None):
    thp = tmp_path / "enabled"
    thp.write_text(thp_text)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT_ENV)}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", CHILD, str(thp), "--x=1", "y"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return out.splitlines()


def test_reexec_keeps_pid_and_arguments(tmp_path):
    lines = _run_child(tmp_path, "always [madvise] never\n")
    starts = [line for line in lines if line.startswith("start")]
    if host_malloc.glibc_version() is None or host_malloc.glibc_version() < (2, 35):
        assert len(starts) == 1 and lines[-1].endswith("tunables ")
        return
    # Started twice (the second time from execve), in one process, with the same arguments.
    assert len(starts) == 2 and starts[0] == starts[1]
    assert lines[-1] == "args ['--x=1', 'y'] tunables glibc.malloc.hugetlb=1"


def test_no_reexec_when_opted_out(tmp_path):
    lines = _run_child(tmp_path, "always [madvise] never\n", {host_malloc.OPT_OUT_ENV: "default"})
    assert sum(line.startswith("start") for line in lines) == 1
    assert lines[-1] == "args ['--x=1', 'y'] tunables "


# Plain malloc through ctypes: NumPy madvises its own big arrays, XLA's buffers are plain malloc.
FAULTS = textwrap.dedent("""
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    size = 256 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):                      # 3 x malloc, touch, free of 256 MiB
        buffer = libc.malloc(size)
        libc.memset(buffer, 1, size)
        libc.free(buffer)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_hugetlb_cuts_page_faults_of_big_buffers():
    """The mechanism the re-execution relies on, measured: 768 MiB touched through malloc is
    196,608 faults of 4 KiB pages; with huge pages it is a few hundred faults of 2 MiB."""
    if host_malloc.tunables_with_hugetlb({}, libc=host_malloc.glibc_version(),
                                         thp=host_malloc.thp_mode()) is None:
        # Here the process would not re-execute: nothing to measure, so check that claim.
        assert host_malloc.thp_mode() != "madvise" or host_malloc.glibc_version() < (2, 35)
        return

    def faults(tunables):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True,
                             text=True, timeout=120, check=True).stdout
        return int(out.split()[-1])

    small_pages = faults("")
    huge_pages = faults("glibc.malloc.hugetlb=1")
    assert small_pages > 3 * 65536 * 0.9          # every 4 KiB page faulted, each time
    assert huge_pages < small_pages / 8, (small_pages, huge_pages)
