"""Importing the package has no effect on the process or the project's files: every module of
``gpt_pipeline``, imported in a fresh interpreter, opens no file of the project (a config, a data
file: only its own code) and no other file from its own code, leaves no warning filter of its own,
sets no umask, signal handler, environment variable or working directory. ``PROBE`` records each of
these as it happens (an audit hook on "open", "os.putenv", "os.unsetenv", "os.chdir"; wrappers of
the functions that have no audit event) when the caller is the package's own code, and prints them;
the test on a small planted package shows that it finds each."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = r'''
import importlib, os, pkgutil, signal, sys, warnings

root, package_name = os.path.realpath(sys.argv[1]), sys.argv[2]
package_dir = os.path.join(root, package_name) + os.sep
stdlib = os.path.dirname(os.__file__)
found, added_filters = [], []


def ours(frame) -> str | None:
    """``file:line`` of the caller (past the standard library's frames and this probe's) when it is
    the package's own code, else None."""
    while frame is not None and frame.f_code.co_filename.startswith((stdlib, "<frozen", "<string>")):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename.startswith(package_dir):
        return f"{os.path.relpath(frame.f_code.co_filename, root)}:{frame.f_lineno}"
    return None


def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.path.realpath(os.fsdecode(args[0]))
        inside = os.path.relpath(path, root)
        code = path.endswith((".py", ".pyc")) or any(part in path for part in ("__pycache__", "__editable__", ".egg-info"))
        if not code and not inside.startswith((os.pardir, ".venv")):  # a file of the project
            found.append(f"opened {inside}")
        elif not code and (where := ours(sys._getframe(1))):  # any other file, by the package's code
            found.append(f"opened {path} at {where}")
    elif event in ("os.putenv", "os.unsetenv", "os.chdir") and (where := ours(sys._getframe(1))):
        found.append(f"{event}{args!r} at {where}")


def recording(module, name):
    original = getattr(module, name)

    def record(*args, **kwargs):
        result = original(*args, **kwargs)
        if where := ours(sys._getframe(1)):
            found.append(f"{module.__name__}.{name}{args!r} at {where}")
            if module is warnings:
                added_filters.append((warnings.filters[0], where))
        return result

    setattr(module, name, record)


sys.addaudithook(audit)
for module, name in [(warnings, "filterwarnings"), (warnings, "simplefilter"), (os, "umask"),
                     (signal, "signal")]:
    recording(module, name)
package = importlib.import_module(package_name)
for info in pkgutil.walk_packages(package.__path__, package_name + "."):
    if not info.name.endswith(".__main__"):  # running it is the command line
        importlib.import_module(info.name)
# a filter set inside ``warnings.catch_warnings`` and gone when it ends changed nothing
found = [line for line in found if not any(line.endswith(where) and entry not in warnings.filters
                                           for entry, where in added_filters)]
print("\n".join(found))
'''


def import_effects(root: Path, package: str) -> list[str]:
    """What importing every module of ``package`` (a folder of ``root``) did, one line each."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(root), package], cwd=root, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if line]


def test_importing_the_package_reads_no_project_file_and_changes_no_process_state():
    assert import_effects(ROOT, "gpt_pipeline") == []


def test_the_probe_finds_each_effect(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "settings.yaml").write_text("a: 1\n")
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text("")
    (tmp_path / "planted" / "effects.py").write_text(textwrap.dedent("""
        import os, pathlib, signal, warnings
        SETTINGS = (pathlib.Path(__file__).parents[1] / "configs" / "settings.yaml").read_text()
        NOTHING = open(os.devnull).read()
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ["PLANTED"] = "1"
        os.umask(os.umask(0o022))
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        with warnings.catch_warnings(action="ignore", category=UserWarning):  # restored: no effect
            warnings.warn("quiet")
    """))
    effects = import_effects(tmp_path, "planted")
    assert [line.split("(")[0].split(" at ")[0] for line in effects] == [
        "opened configs/settings.yaml", "opened /dev/null", "warnings.filterwarnings", "os.putenv",
        "os.umask", "os.umask", "signal.signal"], effects
    assert [line.rpartition(":")[2] for line in effects[1:]] == ["4", "5", "6", "7", "7", "8"], effects
    assert all("planted/effects.py:" in line for line in effects[1:]), effects
