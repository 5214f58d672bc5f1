"""Transparent huge pages for host buffers, requested from glibc before the process starts.

Why: XLA:CPU mallocs each execution's scratch buffer and frees it at the end. For crema_small's
train step at batch 8 that buffer is 2.0 GB. glibc serves an allocation that large with a fresh
`mmap` and returns it with `munmap`. So on every step the kernel faults in and zeroes every 4 KiB
page again: about 520,000 page faults and 1.2 s of system time in a 3.6 s step on a 2-core CPU.

glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) makes malloc `madvise` its memory for
transparent huge pages. The same buffer then faults in as about 1,000 pages of 2 MiB, and GEMMs
take fewer TLB misses. glibc reads tunables only at process start, so `crema-jax` and
`bench/train_step.py` re-execute themselves once with the tunable added. The re-executed process
keeps the same PID, arguments and environment.

Nothing is done when:
- the kernel's THP mode is `always` (already huge) or `never` (the tunable has no effect);
- GLIBC_TUNABLES already sets the tunable;
- the C library is not glibc >= 2.35;
- CREMA_JAX_HOST_MALLOC=default is set.
"""
from __future__ import annotations

import os
import re
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT_ENV = "CREMA_JAX_HOST_MALLOC"
THP_ENABLED_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_ENABLED_PATH) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as f:
            match = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        return None
    return match.group(1) if match else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the running glibc, or None for another C library."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    if name != "glibc":
        return None
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def tunables_with_hugetlb(environ, *, libc: tuple[int, ...] | None,
                          thp: str | None) -> str | None:
    """The GLIBC_TUNABLES value to re-execute with, or None to leave the process as it is."""
    if environ.get(OPT_OUT_ENV, "").strip().lower() == "default":
        return None
    if libc is None or libc < (2, 35) or thp != "madvise":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if f"{TUNABLE}=" in current:
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def reexec_with_hugetlb(*, thp_path: str = THP_ENABLED_PATH) -> None:
    """Re-execute this process with glibc's hugetlb tunable when it would help; else return.

    Call it first thing in a program's entry point, before any threads or large allocations.
    """
    value = tunables_with_hugetlb(os.environ, libc=glibc_version(), thp=thp_mode(thp_path))
    if value is None or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, GLIBC_TUNABLES=value)
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as err:  # Keep running as we are: the tunable is an optimisation.
        print(f"crema_jax: could not re-execute with GLIBC_TUNABLES={value} ({err}); "
              "continuing without it", file=sys.stderr)
