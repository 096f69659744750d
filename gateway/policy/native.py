"""Loading rego-cpp's native library early enough, and telling when it was not.

Importing this module loads rego-cpp (``librego_shared.so``, through regopy). It must happen
before anything else in the process loads the C++ runtime (``libstdc++``), which is why the
``gateway`` package imports it first. The reason is a property of the library as regopy 1.5.2
ships it, measured in ``tests/soak/test_policy_memory.py``:

* rego-cpp links its own allocator (snmalloc) and exports it as the process's C++
  ``operator new`` and ``operator delete``; the code it compiled in calls that allocator, while
  some of the standard-library code it relies on (string and stream helpers) lives in the
  shared ``libstdc++``.
* The dynamic linker binds ``libstdc++``'s own calls to ``operator new`` once, when
  ``libstdc++`` is loaded (ELF symbol lookup: the global scope, then the loading object's
  dependencies in load order). Loaded as a dependency of rego-cpp, they bind to snmalloc and
  every allocation has one owner. Loaded earlier by another extension (aiohttp imports
  frozenlist, a C++ extension, so any ``import aiohttp`` does it), they stay bound to glibc's
  ``malloc``.
* In that second order, blocks that ``libstdc++`` takes from glibc during an evaluation are
  handed back to snmalloc, which does not own them and keeps them: about 6.7 KiB of glibc heap
  per decision that is never reclaimed, not by freeing the output, the input, the bundle or the
  interpreter. Every evaluation path leaks the same (``regoBundleQueryEntrypoint``,
  regopy's ``Interpreter.query_bundle``), so no choice of call avoids it; the load order does.

The extensions the gateway loads besides rego-cpp (frozenlist) link ``libstdc++`` without
calling its allocator, so loading rego-cpp first changes nothing for them.

:func:`load_order_problem` reads the order from the dynamic linker, so an engine built in a
process where the order is wrong says so (the product still decides correctly, but its memory
grows with every cache miss).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import PurePath

import regopy

__all__ = ["load_order_problem", "loaded_objects"]

_REGO_LIBRARY = PurePath(regopy.rego_shared.path).name
_CXX_RUNTIME = "libstdc++.so"


class _ObjectInfo(ctypes.Structure):
    """The leading fields of glibc's ``struct dl_phdr_info`` (only the name is read)."""

    _fields_ = (("dlpi_addr", ctypes.c_size_t), ("dlpi_name", ctypes.c_char_p))


_VISIT = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_ObjectInfo), ctypes.c_size_t, ctypes.c_void_p
)


def loaded_objects() -> list[str]:
    """File names of the shared objects in this process, in the order they were loaded.

    ``dl_iterate_phdr`` walks the dynamic linker's list of loaded objects, which it keeps in load
    order. Empty where the C library has no ``dl_iterate_phdr`` (not an ELF platform).
    """
    names: list[str] = []

    def visit(info: ctypes._Pointer[_ObjectInfo], _size: int, _data: int | None) -> int:
        raw = info.contents.dlpi_name
        if raw:
            names.append(PurePath(raw.decode("utf-8", errors="replace")).name)
        return 0

    iterate = getattr(ctypes.CDLL(None), "dl_iterate_phdr", None)
    if iterate is not None:
        iterate(_VISIT(visit), None)
    return names


@functools.cache
def load_order_problem() -> str | None:
    """Why rego-cpp leaks memory in this process, or None when it was loaded first.

    The answer cannot change once rego-cpp is loaded (objects keep their place in the list), so it
    is computed once.
    """
    names = loaded_objects()
    rego = next((i for i, name in enumerate(names) if name == _REGO_LIBRARY), None)
    runtime = next((i for i, name in enumerate(names) if name.startswith(_CXX_RUNTIME)), None)
    if rego is None or runtime is None or rego < runtime:
        return None
    return (
        "the C++ runtime (libstdc++) was loaded before the policy engine's library, so every "
        "policy evaluation leaks about 6.7 KiB; import gateway (which loads it first) before "
        "aiohttp or any other C++ extension"
    )
