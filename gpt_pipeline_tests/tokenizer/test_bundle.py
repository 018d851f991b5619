"""The tokenizer bundle (``tokenizer.bundle``): one writer, one reader, one naming scheme for the
IO manager, MLflow, the pyfunc model and the CLI; files of earlier versions still load."""

from __future__ import annotations

import json

import pytest

from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.tokenizer.bundle import bundle_files, bundle_path, find_bundle, read_bundle, write_bundle
from gpt_pipeline_tests.tokenizer.test_fileformat import generated_stories


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return BPETokenizer.train(generated_stories(0, 200), vocab_size=120)


def test_save_load_round_trip(tmp_path, tokenizer):
    path = tmp_path / "tok.json"
    written = write_bundle(tokenizer, path)
    loaded = read_bundle(path)
    assert loaded == tokenizer
    assert (loaded.alphabet, loaded.merges, loaded.vocab_size) == (tokenizer.alphabet, tokenizer.merges, 120)
    texts = generated_stories(1, 20)
    assert loaded.encode_batch(texts) == tokenizer.encode_batch(texts)
    assert BPETokenizer.from_json(tokenizer.to_json()) == tokenizer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok.hf.json", "tok.json", "tok.vocab.txt"]
    assert list(written) == ["vocabulary_listing", "hugging_face_tokenizer", "tokenizer"]  # ours last
    assert written == bundle_files(path)
    assert path.read_text(encoding="utf-8") == tokenizer.to_json()
    assert written["vocabulary_listing"].read_text(encoding="utf-8") == tokenizer.vocab_listing()
    assert written["hugging_face_tokenizer"].read_text(encoding="utf-8") == tokenizer.to_hf_json()


def test_files_are_deterministic(tmp_path):
    stories = generated_stories(2, 50)
    a = write_bundle(BPETokenizer.train(stories, 90), tmp_path / "a.json")
    b = write_bundle(BPETokenizer.train(list(reversed(stories)), 90), tmp_path / "b.json")
    for role in a:
        assert a[role].read_bytes() == b[role].read_bytes(), role


def test_one_naming_scheme_in_folders_and_files(tmp_path, tokenizer):
    written = write_bundle(tokenizer, tmp_path / "folder")  # created
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        "bpe_tokenizer.hf.json", "bpe_tokenizer.json", "bpe_tokenizer.vocab.txt"]
    assert written["tokenizer"] == bundle_path(tmp_path / "folder") == tmp_path / "folder" / "bpe_tokenizer.json"
    assert read_bundle(tmp_path / "folder") == read_bundle(written["tokenizer"]) == tokenizer
    # the IO manager's <asset key>.json: the same names, companions <stem>.<name>
    assert {role: p.name for role, p in bundle_files("data/bpe_tokenizer.json").items()} == {
        "tokenizer": "bpe_tokenizer.json", "vocabulary_listing": "bpe_tokenizer.vocab.txt",
        "hugging_face_tokenizer": "bpe_tokenizer.hf.json"}


def test_hugging_face_copy_encodes_and_decodes_like_us(tmp_path, tokenizer):
    tokenizers = pytest.importorskip("tokenizers")
    path = write_bundle(tokenizer, tmp_path)["hugging_face_tokenizer"]
    hf = tokenizers.Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == tokenizer.vocab_size
    texts = generated_stories(3, 300) + ["", " ", "  \n\n", '""', "🙂🙂 kaç  zë\n"]
    ours = tokenizer.encode_batch(texts)
    assert [e.ids for e in hf.encode_batch(texts)] == ours
    assert [hf.decode(ids) for ids in ours] == texts
    # Characters never seen in training: Hugging Face drops them, as unknown="skip" does.
    assert hf.encode("ka Qlo").ids == tokenizer.encode("ka Qlo", unknown="skip")


def test_no_hugging_face_copy_when_two_tokens_share_a_text(tmp_path, tokenizer):
    write_bundle(tokenizer, tmp_path)
    stale = tmp_path / "bpe_tokenizer.hf.json"
    assert stale.is_file()
    clash = BPETokenizer(["a", "b", "c"], [(0, 1), (3, 2), (1, 2), (0, 5)])  # abc twice
    written = write_bundle(clash, tmp_path)
    assert "hugging_face_tokenizer" not in written and not stale.exists()  # the stale one is gone
    assert read_bundle(tmp_path) == clash


def test_files_of_earlier_versions_still_load(tmp_path, tokenizer):
    # The IO manager's files (bpe_tokenizer.json + .vocab.txt + .hf.json): the same scheme.
    data = tmp_path / "data"
    data.mkdir()
    (data / "bpe_tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    (data / "bpe_tokenizer.vocab.txt").write_text(tokenizer.vocab_listing(), encoding="utf-8")
    (data / "bpe_tokenizer.hf.json").write_text(tokenizer.to_hf_json(), encoding="utf-8")
    assert read_bundle(data / "bpe_tokenizer.json") == tokenizer
    # MLflow's tokenizer/ artifact: ours, <name>.json.vocab.txt and Hugging Face's as tokenizer.json.
    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "bpe_tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    (logged / "bpe_tokenizer.json.vocab.txt").write_text(tokenizer.vocab_listing(), encoding="utf-8")
    (logged / "tokenizer.json").write_text(tokenizer.to_hf_json(), encoding="utf-8")
    assert find_bundle(logged) == logged / "bpe_tokenizer.json" and read_bundle(logged) == tokenizer
    # `gpt-pipeline tokenize` and `import-gpt-rs` folders: ours as tokenizer.json.
    cli = tmp_path / "cli"
    cli.mkdir()
    (cli / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    (cli / "tokenizer.json.vocab.txt").write_text(tokenizer.vocab_listing(), encoding="utf-8")
    assert find_bundle(cli) == cli / "tokenizer.json" and read_bundle(cli) == tokenizer


def test_what_is_not_our_tokenizer_fails_in_one_line(tmp_path, tokenizer):
    hf_only = tmp_path / "hf_model"  # interop.hf's directory: Hugging Face's tokenizer.json alone
    hf_only.mkdir()
    (hf_only / "tokenizer.json").write_text(tokenizer.to_hf_json(), encoding="utf-8")
    with pytest.raises(ValueError, match=r"^\S*hf_model/tokenizer.json: a Hugging Face tokenizer.json, not a "
                                         r"gpt-pipeline-bpe file") as error:
        read_bundle(hf_only)
    assert "\n" not in str(error.value)
    write_bundle(tokenizer, tmp_path / "bundle")
    with pytest.raises(ValueError, match=r"bpe_tokenizer.hf.json is the Hugging Face copy in a tokenizer bundle: "
                                         r"give its \S*bundle/bpe_tokenizer.json \(our format\) or its folder"):
        read_bundle(tmp_path / "bundle" / "bpe_tokenizer.hf.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at '\S*empty': expected '\S*empty/bpe_tokenizer.json'"):
        read_bundle(tmp_path / "empty")
    json_file = tmp_path / "other.json"
    json_file.write_text(json.dumps({"format": "sentencepiece"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"other.json: unknown tokenizer format 'sentencepiece'"):
        read_bundle(json_file)
