"""Process-wide runtime settings of the command-line tools."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocates and frees a 64 MiB tensor (over glibc's largest mmap threshold, 32 MiB), then
# reads glibc's malloc statistics: bytes in mmapped blocks (hblkhd) while it lives, and
# free bytes kept in the heap (fordblks) once it is freed.
PROBE = """
import ctypes, sys, torch
from hdsr.runtime import retain_host_memory
applied = retain_host_memory(sys.argv[1] == "on")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks "
                                               "fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
x = torch.empty(16 * 1024 * 1024)  # 64 MiB
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(applied, during.hblkhd, after.fordblks)
"""


def _probe(mode: str) -> tuple[bool, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_host_memory_stays_in_the_process():
    mib = 1024 * 1024
    applied, mapped, kept = _probe("on")
    assert applied
    assert mapped < 64 * mib <= kept  # served from the heap and kept there once freed
    applied, mapped, kept = _probe("off")
    assert not applied
    assert mapped >= 64 * mib > kept  # glibc's default: mapped, and unmapped on free
