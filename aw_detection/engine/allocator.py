"""glibc's malloc told to keep freed memory for reuse, in the processes the tools start.

glibc serves a block over its mmap threshold (128 KiB, raised as blocks are freed, at most
32 MiB) with a fresh mapping and unmaps it on free, and hands the top of its heap back to the
kernel above its trim threshold. A tensor of that size is then page-faulted in again on every
step: on the 2-core development machine, filling a fresh 33.5 MiB tensor took 9.6 ms and a
reused one 0.3 ms. AW-full's generators make such tensors (the ``expand`` gradient at res5 is
33.5 MiB), so AW paid this on every step where the baseline mostly does not (docs/BENCHMARKS.md).
PyTorch's CPU performance guide recommends a caching allocator for the same reason; this is
the glibc-only way to get one, with no extra library.

The tools call ``reuse_freed_memory`` at start (on GPU runs it concerns the host tensors:
data, CPU-side results). It changes nothing where the process does not use glibc, where the
user set glibc's malloc (any ``MALLOC_*`` variable, ``glibc.malloc`` tunables) or preloads
another allocator (jemalloc, tcmalloc, mimalloc), or with ``AW_DETECTION_MALLOC=system``.
Each process (DataLoader workers inherit the setting) then keeps the memory it freed, up to
its own peak, instead of returning it to the system between steps.

Why mallopt and not ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``: glibc reads those
variables once, when the process first calls malloc, which is before the interpreter runs any
line of a tool. Setting them in ``os.environ`` reaches only processes started afterwards; the
tool itself (the trainer, the benchmark) would have to re-execute itself to get them, and code
that imports the library from its own script never would. mallopt sets the same two
thresholds in the running process. A user who prefers the environment sets it in the shell:
any ``MALLOC_*`` variable leaves the choice to glibc.
"""
import ctypes
import ctypes.util
import logging
import os

__all__ = ["reuse_freed_memory"]

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, and this much free memory may stay at its top.
KEEP_BYTES = 1 << 30
# The largest mmap threshold some glibc versions accept (HEAP_MAX_SIZE / 2 on 64-bit).
OLD_GLIBC_MMAP_MAX = 32 << 20


def _user_chose_allocator(env):
    if env.get("AW_DETECTION_MALLOC") == "system":
        return True
    if any(name.startswith("MALLOC_") for name in env):
        return True
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return True
    return any(name in env.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))


def reuse_freed_memory(env=None):
    """Tell glibc malloc to serve blocks up to ``KEEP_BYTES`` from its heap and keep up to that
    much freed memory for reuse. Returns True if it did (see the module docstring for when it
    does not). The process's resident memory then stays near its peak instead of shrinking
    between steps."""
    env = os.environ if env is None else env
    if _user_chose_allocator(env):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl and others differ)
    except (OSError, AttributeError):
        return False
    mmap_set = (libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) == 1
                or libc.mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_MAX) == 1)
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES) == 1
    if not (mmap_set and trim_set):
        logging.getLogger(__name__).warning(
            f"glibc refused mallopt (mmap threshold set: {mmap_set}, trim threshold set: {trim_set})")
    return mmap_set and trim_set
