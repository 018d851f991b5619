"""Compile and load the C kernels (``native/*.c``) with the system's C compiler, on first use.

``kernel(name, head_size)`` builds ``native/<name>.c`` with ``-DHS=<head size> -DVL=<floats per
vector>`` into the kernel cache (``GPT_PIPELINE_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/gpt_pipeline/kernels``, else ``<tmp>/gpt_pipeline_kernels_<uid>``; a folder others
may write to is refused: a planted library would run as the user) and opens it with ``ctypes``,
its functions typed by ``SIGNATURES``. The file name hashes everything that shapes the binary
(sources, headers, defines, flags, compiler, CPU flags); it is written under a temporary name and
renamed. ``kernel`` gives ``None`` where it cannot (no compiler, a failed build,
``GPT_PIPELINE_NATIVE=0``) and ``why_not`` says why: callers keep a PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

SOURCES = Path(__file__).with_name("native")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-Wall")
X86_FLAGS = ("-mprefer-vector-width=512",)  # wide vectors where the CPU has them
_P, _I64, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
SIGNATURES = {  # kernel -> its functions -> (ctypes result type, argument types)
    "attention": {"attention_forward": (_INT, [_P, _P, _P, _P, _I64, _I64, _I64, _I64, _F, _F, _INT]),
                  "attention_backward": (_INT, [_P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _F, _F, _INT])},
    "decode": {"decode_forward": (_INT, [_P] * 7 + [_I64] + [_P] * 4 + [_I64] * 9 + [_F, _INT]),
               "decode_scratch_floats": (_I64, [_I64] * 5 + [_INT])},
}

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded: dict[tuple, tuple[ctypes.CDLL | None, str | None]] = {}  # key -> (library, why not)


def enabled() -> bool:
    """False when the user turned the kernels off (``GPT_PIPELINE_NATIVE=0``)."""
    return os.environ.get("GPT_PIPELINE_NATIVE", "1").strip().lower() not in {"0", "false", "no", "off"}


def cache_dirs() -> tuple[Path, ...]:
    """Where built libraries may go, in order (see the module docstring)."""
    if os.environ.get("GPT_PIPELINE_KERNEL_CACHE"):
        return (Path(os.environ["GPT_PIPELINE_KERNEL_CACHE"]),)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    user = getattr(os, "getuid", lambda: "user")()
    return Path(base) / "gpt_pipeline" / "kernels", Path(tempfile.gettempdir()) / f"gpt_pipeline_kernels_{user}"


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, else ``gcc``; ``None`` when there is none."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def kernel(name: str, head_size: int) -> ctypes.CDLL | None:
    """``native/<name>.c`` built for ``head_size`` (once; opened once per process), or ``None``."""
    return _load(name, head_size)[0]


def why_not(name: str, head_size: int) -> str | None:
    """Why ``kernel(name, head_size)`` is ``None`` (one line), or ``None`` when it is there."""
    return _load(name, head_size)[1]


def _load(name: str, head_size: int) -> tuple[ctypes.CDLL | None, str | None]:
    vl = vector_length(head_size)
    if vl is None:
        return None, f"head size {head_size} is not a multiple of 4"
    env = os.environ  # what cache_dirs() reads: cheaper than the paths on every training forward
    key = (name, head_size, vl, enabled(), *map(env.get, ("GPT_PIPELINE_KERNEL_CACHE", "XDG_CACHE_HOME", "HOME")),
           tempfile.gettempdir())
    with _lock:
        if key not in _loaded:
            try:
                _loaded[key] = _build_and_open(name, {"HS": head_size, "VL": vl}), None
            except _Unavailable as why:
                _loaded[key] = None, str(why)
                _log.warning("native %s kernel HS=%d unavailable (%s): using the PyTorch path", name, head_size, why)
        return _loaded[key]


def vector_length(head_size: int, widest: int | None = None) -> int | None:
    """Floats per vector a kernel uses for ``head_size``: the largest of 16, 8 and 4 that divides
    it and fits the machine's registers (``widest``, default ``vector_floats()``), or ``None``.

    Example:
        >>> vector_length(32, widest=16), vector_length(24, widest=16), vector_length(32, widest=8)
        (16, 8, 8)
    """
    widest = vector_floats() if widest is None else widest
    return next((v for v in (16, 8, 4) if v <= widest and head_size % v == 0), None)


class _Unavailable(Exception):
    pass


def _build_and_open(name: str, defines: dict[str, int]) -> ctypes.CDLL:
    if not enabled():
        raise _Unavailable("turned off by GPT_PIPELINE_NATIVE=0")
    cc = compiler()
    if cc is None:
        raise _Unavailable("no C compiler (set CC, or install gcc)")
    source = SOURCES / f"{name}.c"
    flags = [*FLAGS, *(X86_FLAGS if platform.machine() in {"x86_64", "AMD64"} else ()),
             *(f"-D{k}={v}" for k, v in sorted(defines.items()))]
    version = subprocess.run([cc, "--version"], capture_output=True).stdout + cc.encode()
    digest = hashlib.sha256(b"\0".join([*_source_parts(source), " ".join(flags).encode(), version, _cpu_flags()]))
    tag = "_".join(f"{k}{v}" for k, v in sorted(defines.items()))
    file_name = f"{name}_{tag}_{digest.hexdigest()[:16]}.so"
    reasons = []
    for folder in cache_dirs():
        try:
            _private_folder(folder)
        except _Unavailable as why:
            reasons.append(str(why))
            continue
        target = folder / file_name
        if not target.exists():
            _compile(cc, flags, source, target)
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as error:
            raise _Unavailable(f"cannot open {target}: {error}") from None
        for function, (result, arguments) in SIGNATURES.get(name, {}).items():
            getattr(lib, function).restype, getattr(lib, function).argtypes = result, arguments
        return lib
    raise _Unavailable("; ".join(reasons))


def _source_parts(source: Path) -> list[bytes]:
    """The bytes of ``source`` and of the ``native/`` headers it includes: what the name hashes."""
    text = source.read_bytes()
    headers = re.findall(rb'^#include "([^"]+)"', text, flags=re.MULTILINE)
    return [text, *((SOURCES / name.decode()).read_bytes() for name in headers)]


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (mode 700) if needed; raise unless the user owns it and only they may write."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        status = folder.stat()
    except OSError as error:
        raise _Unavailable(f"cannot build into {folder}: {error}") from None
    if hasattr(os, "getuid") and (status.st_uid != os.getuid() or status.st_mode & 0o022):
        raise _Unavailable(f"refusing kernel folder {folder}: owned by another user or writable by others")


def _compile(cc: str, flags: list[str], source: Path, target: Path) -> None:
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            result = subprocess.run([cc, *flags, str(source), "-o", str(built)], capture_output=True, text=True)
            if result.returncode != 0:
                lines = [line.strip() for line in result.stderr.splitlines() if line.strip()] or ["no message"]
                first = next((line for line in lines if "error" in line), lines[0])
                raise _Unavailable(f"{Path(cc).name} failed on {source.name}: {first}")
            os.replace(built, target)  # atomic: readers see the whole library or none
    except OSError as error:
        raise _Unavailable(f"cannot build into {target.parent}: {error}") from None
    _log.info("compiled %s", target)


@functools.cache
def vector_floats() -> int:
    """Floats in the widest SIMD register ``-march=native`` targets: 16 with AVX-512, 8 with AVX(2),
    else 4. Vector types wider than the machine's spill to memory (12x slower with AVX2 only)."""
    flags = set(_cpu_flags().decode(errors="replace").replace("\t", " ").split())
    if platform.machine() in {"x86_64", "AMD64"}:
        if "avx512f" in flags:
            return 16
        if "avx2" in flags or "avx" in flags:
            return 8
    return 4


@functools.cache
def _cpu_flags() -> bytes:
    """What ``-march=native`` sees: the CPU's feature flags (Linux), else the platform's name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".encode()
