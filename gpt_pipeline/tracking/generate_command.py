"""``gpt-pipeline generate``'s model and tokenizer: what the pipeline stored, found in one command.

The model is a checkpoint file (``train``'s ``final.safetensors``, the stored
``data/champion_model.safetensors`` or a variant's ``data/trained_model/<variant>.safetensors``)
or a registered model's URI (``models:/gpt-pipeline@champion``, ``models:/gpt-pipeline/3``,
``runs:/<id>/model``): a URI is downloaded from MLflow and brings its own tokenizer. The tokenizer
is, first found: ``--tokenizer`` (a bundle's ``.json`` or its folder), ``--dataset-dir``'s,
a URI's own, the one stored beside the model (the asset ``bpe_tokenizer`` in the model's data
directory), the data directory's. Provenance decides whether the two belong together.

MLflow is imported only for a URI, so that the command costs nothing more for a file.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

URI_SCHEMES = ("models:/", "runs:/")
TOKENIZER_FILE = "bpe_tokenizer.json"  # the asset's stored bundle, and a dataset folder's (tokenizer.bundle)


@dataclass(frozen=True)
class GenerationInputs:
    model: Path  # a checkpoint file
    tokenizer: Path  # a tokenizer bundle's main file or folder
    model_label: str  # how messages name them
    tokenizer_label: str
    same_origin: bool  # both from one registered model: nothing to check between them


def is_model_uri(text: str) -> bool:
    """Example:
    >>> is_model_uri("models:/gpt-pipeline@champion"), is_model_uri("data/champion_model.safetensors")
    (True, False)
    """
    return text.startswith(URI_SCHEMES)


def stored_tokenizer(model: Path, data_dir: Path) -> Path | None:
    """The tokenizer the pipeline stored with ``model``: ``bpe_tokenizer.json`` in its folder
    (``data/champion_model.safetensors``) or the folder above (``data/trained_model/<v>.safetensors``),
    else in ``data_dir``; None when there is none.

    Example:
        >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "trained_model").mkdir()
        >>> _ = (d / TOKENIZER_FILE).write_text("{}")
        >>> stored_tokenizer(d / "trained_model" / "lr_low.safetensors", d / "elsewhere") == d / TOKENIZER_FILE
        True
        >>> stored_tokenizer(d / "x" / "y" / "final.safetensors", d / "elsewhere") is None
        True
    """
    folder = model.resolve().parent
    for candidate in (folder / TOKENIZER_FILE, folder.parent / TOKENIZER_FILE, data_dir / TOKENIZER_FILE):
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def generation_inputs(model: str, tokenizer: str | None, dataset_dir: str | None,
                      tracking_uri: str | None = None) -> Iterator[GenerationInputs]:
    """The checkpoint and tokenizer to generate with (a URI's files downloaded to a temporary
    folder that lives as long as the context). ``FileNotFoundError`` or ``ValueError`` in one line
    when either cannot be found."""
    from gpt_pipeline.storage import data_dir
    from gpt_pipeline.tokenizer.bundle import find_bundle

    chosen = Path(tokenizer) if tokenizer else Path(dataset_dir) if dataset_dir else None
    chosen_label = "--tokenizer" if tokenizer else "--dataset-dir"
    if chosen is not None and not chosen.exists():
        raise FileNotFoundError(f"{chosen_label} {str(chosen)!r} does not exist")
    if chosen is not None and find_bundle(chosen) is None:
        raise FileNotFoundError(f"{'dataset directory' if dataset_dir and not tokenizer else 'tokenizer'} "
                                f"{str(chosen)!r} has no {TOKENIZER_FILE}: run `gpt-pipeline tokenize` first")
    if is_model_uri(model):
        with tempfile.TemporaryDirectory(prefix="gpt-pipeline-generate.") as tmp:
            weights, own_tokenizer = _download(model, Path(tmp), tracking_uri)
            yield GenerationInputs(weights, chosen or own_tokenizer, model,
                                   str(chosen) if chosen else f"{model}'s tokenizer", chosen is None)
        return
    path = Path(model)
    if not path.is_file():
        raise FileNotFoundError(f"model {model!r} does not exist (a .safetensors checkpoint, or a URI "
                                "such as models:/gpt-pipeline@champion)")
    if chosen is None:
        chosen = stored_tokenizer(path, data_dir())
        if chosen is None:
            raise FileNotFoundError(f"no tokenizer beside {model!r} nor in the data directory: pass "
                                    "--tokenizer (a bpe_tokenizer.json or its folder) or --dataset-dir")
    yield GenerationInputs(path, chosen, model, str(chosen), False)


def _download(uri: str, folder: Path, tracking_uri: str | None) -> tuple[Path, Path]:
    """The weights and tokenizer files of the pyfunc model at ``uri`` (``tracking.pyfunc``'s
    artifacts, as its MLmodel file names them)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from gpt_pipeline.tracking.pyfunc import CHECKPOINT_ARTIFACT, TOKENIZER_ARTIFACT
    from gpt_pipeline.tracking.tracker import default_tracking_uri, redacted

    store = tracking_uri or default_tracking_uri()
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder),
                                                         tracking_uri=store))
        artifacts = Model.load(str(local)).flavors.get("python_function", {}).get("artifacts", {})
    except MlflowException as error:
        raise ValueError(f"model {uri!r} cannot be loaded from {redacted(store)}: "
                         f"{str(error).splitlines()[0]}") from None
    try:
        return tuple(local / artifacts[key]["path"] for key in (CHECKPOINT_ARTIFACT, TOKENIZER_ARTIFACT))
    except (KeyError, TypeError):
        raise ValueError(f"model {uri!r} is not a gpt-pipeline model (its MLmodel names no "
                         f"{CHECKPOINT_ARTIFACT} and {TOKENIZER_ARTIFACT} artifacts)") from None
