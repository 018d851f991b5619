"""Nothing unsafe is loaded, nothing is served beyond this machine.

- The package source holds no pickle load (``pickle``/``dill``/``cloudpickle``/``joblib``/
  ``shelve``/``marshal``, ``torch.load`` without ``weights_only=True``, ``numpy.load`` with
  ``allow_pickle=True``, ``pandas.read_pickle``, unsafe ``yaml.load``) and no ``0.0.0.0``: an AST
  scan, itself tested on snippets that must and must not be flagged.
- Every file the pipeline stores is safetensors, Parquet or JSON (plus the plain-text vocabulary
  listing), judged by content, not by name; training checkpoints are safetensors.
- Every loader refuses a pickle file without running it.
- The Makefile and README start ``dagster dev`` and ``mlflow ui`` on 127.0.0.1 only.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa
import pytest
import torch

from gpt_pipeline.training.checkpoint import load_checkpoint, read_checkpoint, read_checkpoint_metadata
from gpt_pipeline.defs.formats import FORMATS
from gpt_pipeline.defs.io_manager import AssetFileIOManager
from gpt_pipeline.model.gpt import GPT, GPTConfig
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.training.loop import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "gpt_pipeline"

# --- the source scan ----------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
ALIASES = {"np": "numpy", "pd": "pandas", "th": "torch"}
ALWAYS_UNSAFE = {"pandas.read_pickle", "yaml.unsafe_load", "yaml.full_load", "mlflow.pytorch.load_model",
                 "mlflow.sklearn.load_model", "torch.serialization.load"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(ALIASES.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


SAFE_LOADERS = ("SafeLoader", "CSafeLoader")


def _safe_loader_classes(tree: ast.AST) -> set[str]:
    """The classes ``tree`` defines that derive from ``yaml.SafeLoader`` (or ``CSafeLoader``),
    directly or through another such class of the same source: a ``Loader=`` that is safe too."""
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    safe: set[str] = set()
    while True:
        more = {c.name for c in classes if c.name not in safe and any(
            _dotted(base).endswith(SAFE_LOADERS) or _dotted(base) in safe for base in c.bases)}
        if not more:
            return safe
        safe |= more


def unsafe_loads(source: str) -> list[str]:
    """What in ``source`` loads pickles (or serves everyone): one ``line: what`` per finding.

    Example:
        >>> unsafe_loads("import torch\\nstate = torch.load('m.pt')\\nok = torch.load('m.pt', weights_only=True)")
        ['2: torch.load without weights_only=True']
    """
    found = []
    tree = ast.parse(source)
    safe_loaders = _safe_loader_classes(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in PICKLE_MODULES:
                found.append(f"{line}: from {module} import")
            for alias in node.names:
                if f"{module}.{alias.name}" in ALWAYS_UNSAFE | {"torch.load", "yaml.load"}:
                    found.append(f"{line}: from {module} import {alias.name}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name.split(".")[0] in PICKLE_MODULES:
                found.append(f"{line}: {name}")
            elif name in ALWAYS_UNSAFE:
                found.append(f"{line}: {name}")
            elif name == "torch.load" and not _keyword_is(node, "weights_only", True):
                found.append(f"{line}: torch.load without weights_only=True")
            elif name == "numpy.load" and _keyword_is(node, "allow_pickle", True):
                found.append(f"{line}: numpy.load with allow_pickle=True")
            elif name == "yaml.load" and not any(
                k.arg == "Loader" and (_dotted(k.value).endswith(SAFE_LOADERS) or _dotted(k.value) in safe_loaders)
                for k in node.keywords
            ):
                found.append(f"{line}: yaml.load without a SafeLoader")
        elif isinstance(node, ast.Constant) and node.value == "0.0.0.0":
            found.append(f"{line}: binds 0.0.0.0")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\nx = pickle.load(open('f', 'rb'))",
        "import pickle as p\nx = p.loads(b'')",
        "from pickle import loads",
        "import cloudpickle",
        "import joblib\nm = joblib.load('m.joblib')",
        "import dill",
        "import torch\nx = torch.load('m.pt')",
        "import torch\nx = torch.load('m.pt', weights_only=False)",
        "from torch import load",
        "import numpy as np\nx = np.load('a.npy', allow_pickle=True)",
        "import pandas as pd\nx = pd.read_pickle('f.pkl')",
        "import yaml\nx = yaml.load(open('c.yaml'))",
        "import yaml\nclass L(yaml.Loader): pass\nx = yaml.load(open('c.yaml'), Loader=L)",
        "import yaml\nclass L(yaml.UnsafeLoader): pass\nclass M(L): pass\nx = yaml.load(open('c.yaml'), Loader=M)",
        "import yaml\nx = yaml.unsafe_load(open('c.yaml'))",
        "import mlflow\nm = mlflow.pytorch.load_model('runs:/x/model')",
        "HOST = '0.0.0.0'",
    ],
)
def test_scanner_flags_unsafe_snippets(snippet):
    assert unsafe_loads(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\nx = torch.load('m.pt', weights_only=True)",
        "import numpy as np\nx = np.load('a.npy')",
        "import yaml\nx = yaml.safe_load(open('c.yaml'))",
        "import yaml\nx = yaml.load(open('c.yaml'), Loader=yaml.SafeLoader)",
        # a SafeLoader subclass (sweeps.py's loader that refuses a key written twice), directly or not
        "import yaml\nclass L(yaml.SafeLoader): pass\nx = yaml.load(open('c.yaml'), Loader=L)",
        "import yaml\nclass L(yaml.SafeLoader): pass\nclass M(L): pass\nx = yaml.load(open('c.yaml'), Loader=M)",
        "from safetensors.torch import load_file\nx = load_file('m.safetensors')",
        "import json\nx = json.loads('{}')",
        "HOST = '127.0.0.1'",
    ],
)
def test_scanner_passes_safe_snippets(snippet):
    assert unsafe_loads(snippet) == []


def scan_package() -> list[str]:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    return [f"{path.relative_to(REPO)}:{finding}" for path in sources for finding in unsafe_loads(path.read_text())]


def test_package_source_loads_no_pickle():
    # Parsed in a fresh interpreter: CPython 3.11's AST builder can fail spuriously ("AST
    # constructor recursion depth mismatch", python/cpython#106905) while threads that earlier
    # tests left behind compile code in this process.
    code = "import json; from gpt_pipeline_tests.test_safety import scan_package; print(json.dumps(scan_package()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


# --- what is stored, judged by content ----------------------------------------------------------


def _kind(path: Path) -> str:
    """'parquet', 'safetensors', 'json', 'text' or 'unknown', from the bytes alone."""
    data = path.read_bytes()
    if len(data) >= 8 and data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        return "parquet"
    if len(data) >= 8:
        (header_length,) = struct.unpack("<Q", data[:8])
        if 8 + header_length <= len(data):
            try:
                header = json.loads(data[8 : 8 + header_length])
                if isinstance(header, dict):
                    return "safetensors"
            except ValueError:
                pass
    try:
        json.loads(data)
        return "json"
    except ValueError:
        pass
    try:
        data.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


TINY = GPTConfig(vocab_size=6, embedding_size=8, context_length=4, head_count=2, block_count=1,
                 feed_forward_multiplier=2)


def test_stored_files_are_parquet_json_or_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "data"))
    tokenizer = BPETokenizer.train(["a cat sat", "a bat"], 10)
    values = {
        "frame": pl.DataFrame({"text": ["a cat sat"]}),
        "table": pa.table({"tokens": [[1, 2]], "split": ["train"]}),
        "tokenizer": tokenizer,
        "model": GPT(TINY),
    }
    manager = AssetFileIOManager()
    for key, value in values.items():
        manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey(key)), value)
    kinds = {p.name: _kind(p) for p in (tmp_path / "data").iterdir()}
    assert kinds["frame.parquet"] == kinds["table.parquet"] == "parquet"
    assert kinds["tokenizer.json"] == "json" and kinds["model.safetensors"] == "safetensors"
    allowed = {"parquet", "json", "safetensors"}
    assert all(kind in allowed or (kind == "text" and name.endswith(".txt")) for name, kind in kinds.items()), kinds
    assert {fmt.suffix for fmt in FORMATS} <= {".parquet", ".json", ".safetensors"}


def test_training_checkpoints_are_safetensors(tmp_path):
    stories = [[1, 2, 3, 4, 5, 1, 2], [2, 3, 4, 5, 1, 2, 3], [3, 4, 5, 1, 2, 3, 4], [5, 4, 3, 2, 1, 5, 4]]
    data = TokenArray.from_lists(stories, 6)
    config = TrainConfig(training_iterations=4, evaluation_interval=2, evaluation_iterations=1,
                         contexts_per_batch=2, device="cpu")
    train(TINY, config, data, data, tmp_path / "run")
    files = sorted((tmp_path / "run").iterdir())
    checkpoints = [p for p in files if not p.name.startswith(".")]
    assert {p.name for p in checkpoints} >= {"0.safetensors", "2.safetensors", "final.safetensors"}
    assert all(_kind(p) == "safetensors" for p in checkpoints), [(p.name, _kind(p)) for p in checkpoints]


# --- loaders refuse pickles ---------------------------------------------------------------------


class _Trap:
    """Unpickling this creates the directory ``marker``: proof that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickle_files(tmp_path: Path, suffix: str) -> list[Path]:
    marker = str(tmp_path / "unpickled")
    raw = tmp_path / f"raw_pickle{suffix}"
    raw.write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    zipped = tmp_path / f"torch_save{suffix}"
    torch.save({"weights": _Trap(marker), "w": torch.zeros(2)}, zipped)  # the .pt format
    return [raw, zipped]


def _loaders():
    from gpt_pipeline.interop.gpt_rs import load_checkpoint as load_gpt_rs

    readers = {f"io_manager_{fmt.type_.__name__}": fmt.read for fmt in FORMATS}
    return {
        **readers,
        "load_checkpoint": load_checkpoint,
        "read_checkpoint": read_checkpoint,
        "read_checkpoint_metadata": read_checkpoint_metadata,
        "gpt_rs_load_checkpoint": lambda path: load_gpt_rs(path, GPTConfig()),
        "BPETokenizer.load": BPETokenizer.load,
    }


def test_the_trap_springs_when_unpickled(tmp_path):
    raw, zipped = _pickle_files(tmp_path, ".bin")
    pickle.loads(raw.read_bytes())
    assert (tmp_path / "unpickled").is_dir()
    os.rmdir(tmp_path / "unpickled")
    torch.load(zipped, weights_only=False)  # what an unsafe loader would do
    assert (tmp_path / "unpickled").is_dir()


@pytest.mark.parametrize("loader", list(_loaders()))
def test_loaders_refuse_pickles_without_running_them(tmp_path, loader):
    suffix = {"BPETokenizer.load": ".json", "io_manager_BPETokenizer": ".json", "io_manager_DataFrame": ".parquet",
              "io_manager_Table": ".parquet", "io_manager_TableFile": ".parquet"}.get(loader, ".safetensors")
    for path in _pickle_files(tmp_path, suffix):
        with pytest.raises(Exception):
            _loaders()[loader](path)
        assert not (tmp_path / "unpickled").exists(), f"{loader} unpickled {path.name}"


# --- servers on 127.0.0.1 -----------------------------------------------------------------------


def _make_variables(text: str) -> dict[str, str]:
    variables = {}
    for match in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*)$", text, re.M):
        variables.setdefault(match.group(1), match.group(2).strip())
    return variables


def _expand(line: str, variables: dict[str, str]) -> str:
    for _ in range(5):
        line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
    return line


SERVER = re.compile(r"\b(dagster dev|dg dev|dagster-webserver|mlflow (?:ui|server|models serve))\b")
HOST_OPTION = re.compile(r"(?:-h|--host)[ =](\S+)")


def test_makefile_serves_on_localhost_only():
    text = (REPO / "Makefile").read_text()
    variables = _make_variables(text)
    commands = [c for c in (_expand(line, variables) for line in text.splitlines()) if SERVER.search(c)]
    started = {SERVER.search(c).group(1).split()[0] for c in commands}
    assert "mlflow" in started and started & {"dagster", "dg"}, commands
    for command in commands:
        hosts = HOST_OPTION.findall(command)
        assert hosts and set(hosts) == {"127.0.0.1"}, command
    assert "0.0.0.0" not in text


def test_readme_serves_on_localhost_only():
    text = (REPO / "README.md").read_text()
    lines = [line for line in text.splitlines() if SERVER.search(line)]
    assert any("dagster" in line for line in lines) and any("mlflow" in line for line in lines)
    for line in lines:
        assert "127.0.0.1" in line, line
        assert all(host == "127.0.0.1" for host in HOST_OPTION.findall(line)), line
    assert "0.0.0.0" not in text
