"""What a camcli process sets up before and after torch loads: huge pages, the paused collector.

Huge pages for PyTorch's large CPU buffers, switched on before torch allocates anything.

A CPU forward pass allocates its feature maps afresh every time: resnet50 on 32 images at
224 px asks for about 1 GB (3.7 GB with unfolded batch norms). glibc hands buffers that large
straight from ``mmap`` and back with ``munmap``, so each pass page-faults every 4 KiB page of
them in again, and the kernel zeroes each page first: about a million faults, a third of the
pass's CPU time on the 2-core machine of ``docs/benchmarks.md``. PyTorch (2.2 and later) asks
the kernel for 2 MiB transparent huge pages for buffers of 2 MiB and more when
``THP_MEM_ALLOC_ENABLE=1``: 512 times fewer faults and fewer TLB misses, the same numbers.

PyTorch reads the variable once, at its first CPU allocation, so ``camcli/__init__.py`` sets
it on import, before torch is imported. A value the user set is kept:
``THP_MEM_ALLOC_ENABLE=0 camcli ...`` turns it off. Only Linux has transparent huge pages
(``/sys/kernel/mm/transparent_hugepage/enabled`` must be ``always`` or ``madvise``, the
default of the common distributions); elsewhere nothing is set. With ``defrag`` at its
``madvise`` default the kernel may compact memory to find a huge page on a fault, which on a
host with badly fragmented memory can stall a pass now and then: a batch tool's trade, and
``THP_MEM_ALLOC_ENABLE=0`` is there for a latency-bound embedding.
"""

from __future__ import annotations

import gc
import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def enable_huge_pages() -> bool:
    """Ask PyTorch for huge pages on large CPU buffers unless the user chose; whether it is on."""
    if not sys.platform.startswith("linux"):
        return False
    os.environ.setdefault(VARIABLE, "1")
    return os.environ[VARIABLE] == "1"  # PyTorch takes "1" and "0" and ignores anything else


def pause_gc() -> None:
    """Pause the cyclic garbage collector for start-up (``camcli.cli.main``).

    Importing torch and torchvision makes about a million Python objects, and the collector
    would walk them all again and again while the rest of start-up allocates (~0.3 s of a
    one-image run). ``resume_gc`` turns it back on once the model is ready.
    """
    gc.disable()


def resume_gc() -> None:
    """Resume garbage collection paused by ``pause_gc``, if it is paused.

    The objects alive now (torch's modules, the model) are frozen: later collections skip them.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def end_gc_pause() -> None:
    """Hand every object back to the collector for interpreter shutdown: extension modules
    (triton's nanobind bindings) report frozen, never-freed objects as leaks at exit."""
    gc.unfreeze()
    gc.enable()
