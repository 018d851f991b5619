"""``gpt-pipeline generate`` from what the pipeline stored: the champion's file, a variant's file
and the registry's ``models:/gpt-pipeline@champion``, each with the stored tokenizer found
without being named; a tokenizer the model was not trained with is refused in one line."""

from __future__ import annotations

import dagster as dg
import pytest

from gpt_pipeline.cli import main
from gpt_pipeline.definitions import defs
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import write_bundle
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    """The whole lineage of train_gpt_job (tiny) in a data dir and MLflow store of its own."""
    root = tmp_path_factory.mktemp("generate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPT_PIPELINE_DATA_DIR", str(root / "data"))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        (root / "home").mkdir()
        with dg.instance_for_test(temp_dir=str(root / "home")) as instance:
            result = defs.resolve_job_def("train_gpt_job").execute_in_process(
                run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default")
        assert result.success
        yield root


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", "--input", "Once", "--token-count", "6", "--seed", "3", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("model", ["data/champion_model.safetensors", "data/trained_model/default.safetensors",
                                   "models:/gpt-pipeline@champion"])
def test_generates_from_what_the_pipeline_stored_in_one_command(materialized, model, monkeypatch, capsys):
    monkeypatch.chdir(materialized)  # as a user in the project folder: relative paths
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(materialized / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{materialized / 'mlruns' / 'mlflow.db'}")
    code, out, err = _generate(capsys, "--model", model)
    assert code == 0, err
    assert out.startswith("Once") and len(out.strip()) > len("Once")
    assert "warning" not in err  # the stored tokenizer is the model's: nothing to warn about
    # the same text with the tokenizer named (the data folder, as --dataset-dir or --tokenizer)
    for option in ("--dataset-dir", "--tokenizer"):
        assert _generate(capsys, "--model", model, option, "data")[:2] == (0, out)


def test_a_tokenizer_the_model_was_not_trained_with_is_refused_in_one_line(materialized, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(materialized / "data"))
    write_bundle(BPETokenizer.train(["Once upon a time"], 16), tmp_path / "other")
    code, out, err = _generate(capsys, "--model", str(materialized / "data" / "champion_model.safetensors"),
                               "--tokenizer", str(tmp_path / "other"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "generate refused" in err and "--tokenizer" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "models:/gpt-pipeline@nobody"], "cannot be loaded from"),
    (["--model", "missing.safetensors"], "model 'missing.safetensors' does not exist"),
    (["--model", "data/champion_model.safetensors", "--tokenizer", "nowhere"], "--tokenizer 'nowhere' does not exist"),
])
def test_what_cannot_be_found_is_named_in_one_line(materialized, monkeypatch, capsys, args, message):
    monkeypatch.chdir(materialized)
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(materialized / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{materialized / 'mlruns' / 'mlflow.db'}")
    code, out, err = _generate(capsys, *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def test_without_a_stored_tokenizer_the_error_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPT_PIPELINE_DATA_DIR", str(tmp_path / "empty"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "final.safetensors").write_bytes(b"")
    code, _, err = _generate(capsys, "--model", str(tmp_path / "run" / "final.safetensors"))
    assert code == 2 and "pass --tokenizer" in err and err.count("\n") == 1
