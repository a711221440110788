"""aw_detection.engine.allocator: glibc keeps freed memory for reuse, unless the user chose."""
import ctypes
import os
import subprocess
import sys

import pytest

from aw_detection.engine.allocator import reuse_freed_memory

from .conftest import ROOT


@pytest.mark.parametrize("env", [
    {"AW_DETECTION_MALLOC": "system"},
    {"MALLOC_MMAP_THRESHOLD_": "65536"},
    {"MALLOC_ARENA_MAX": "2"},
    {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
    {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
])
def test_the_users_allocator_choice_is_left_alone(env):
    assert reuse_freed_memory(env) is False


# Run in a fresh interpreter (the setting is per process and cannot be undone): a 40 MiB block
# is mmapped by glibc's defaults (mallinfo2's hblkhd) and comes from the heap after the call.
_PROBE = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("allocator", sys.argv[1])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
if sys.argv[2] == "tuned":
    assert allocator.reuse_freed_memory({}) is True
before = libc.mallinfo2().hblkhd
block = libc.malloc(40 << 20)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="needs glibc >= 2.33")
def test_large_blocks_come_from_the_heap_after_the_call():
    module = os.path.join(ROOT, "aw_detection", "engine", "allocator.py")
    mapped = {}
    for mode in ("default", "tuned"):
        out = subprocess.run([sys.executable, "-c", _PROBE, module, mode], capture_output=True,
                             text=True, check=True, env={"PATH": os.environ.get("PATH", "")})
        mapped[mode] = int(out.stdout)
    assert mapped == {"default": pytest.approx(40 << 20, rel=0.01), "tuned": 0}
