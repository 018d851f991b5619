"""Tests for gpt_pipeline.interop.gpt_rs_files: gpt-rs's .ron files and the import of a gpt-rs run.

The round trip trains a tiny tokenizer and model with our code on generated stories, writes them
in gpt-rs's formats (dataset .ron, config .ron files, per-head safetensors), imports them, and
checks that the imported tokenizer, dataset and model are the same: same ids, same logits.
"""

import math
import re

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from gpt_pipeline.training.checkpoint import load_checkpoint
from gpt_pipeline.data.corpus import generate_stories
from gpt_pipeline.data.splits import dataset_splits
from gpt_pipeline.interop import gpt_rs_files as files
from gpt_pipeline_tests.file_writers import save_gpt_rs_checkpoint, write_train_config, write_transformer_config
from gpt_pipeline.interop.ron import RonError
from gpt_pipeline.model.gpt import GPTConfig
from gpt_pipeline.model.generations import GenerationConfig, generate_samples
from gpt_pipeline.tokenizer import BPETokenizer
from gpt_pipeline.data.tokens import TokenArray
from gpt_pipeline.training.loop import TrainConfig, train

MODEL = GPTConfig(vocab_size=200, embedding_size=16, context_length=16, head_count=2, block_count=1,
                  feed_forward_multiplier=2, embedding_dropout=0.1, attention_dropout=0.0,
                  feed_forward_dropout=0.05, residual_dropout=0.05)
TRAINING = TrainConfig(learning_rate=3e-3, training_iterations=15, evaluation_interval=15,
                       evaluation_iterations=1, contexts_per_batch=4, seed=3, device="cpu")


@pytest.fixture(scope="module")
def trained():
    """A tokenizer and model trained with our code on 50 generated stories, and the held-out tail."""
    stories = generate_stories(60)
    tokenizer = BPETokenizer.train(stories[:50], MODEL.vocab_size)
    encoded = tokenizer.encode_batch(stories[:50])
    data = TokenArray.from_lists(encoded, MODEL.vocab_size)
    result = train(MODEL, TRAINING, data, data)
    return tokenizer, encoded, result.model.cpu().eval(), stories[50:]


def write_gpt_rs_run(directory, tokenizer, encoded, model, train_config=TRAINING):
    """gpt-rs's four files for our objects, as gpt-rs would have left them."""
    paths = {
        "dataset": files.write_dataset(directory / "dataset_200_stories.parquet.ron", tokenizer, encoded),
        "config": write_transformer_config(directory / "transformer_config.ron", model.config),
        "train": write_train_config(directory / "train_config.ron", train_config),
        "checkpoint": save_gpt_rs_checkpoint(directory / "final.safetensors", model),
    }
    return paths


def test_import_round_trip_gives_the_same_tokens_and_logits(tmp_path, trained):
    tokenizer, encoded, model, held_out = trained
    gpt_rs = write_gpt_rs_run(tmp_path / "gpt-rs", tokenizer, encoded, model)
    out = tmp_path / "imported"
    run = files.import_gpt_rs_run(gpt_rs["dataset"], gpt_rs["config"], gpt_rs["checkpoint"], out,
                                  train_config_file=gpt_rs["train"])
    assert (run.vocab_size, run.stories, run.tokens) == (200, 50, sum(map(len, encoded)))
    assert sorted(p.name for p in out.iterdir()) == [
        "bpe_tokenizer.hf.json", "bpe_tokenizer.json", "bpe_tokenizer.vocab.txt", "dataset.parquet",
        "model.safetensors", "run_config.yaml"]

    imported_tokenizer = BPETokenizer.load(out / "bpe_tokenizer.json")
    assert imported_tokenizer == tokenizer
    held_out_ids = tokenizer.encode_batch(held_out, unknown="skip")
    assert imported_tokenizer.encode_batch(held_out, unknown="skip") == held_out_ids

    train_split, test_split = dataset_splits(pq.read_table(out / "dataset.parquet"))
    assert (len(train_split), len(test_split)) == (45, 5)  # gpt-rs's 90%
    assert [train_split.story(i).tolist() for i in range(45)] == encoded[:45]
    assert [test_split.story(i).tolist() for i in range(5)] == encoded[45:]

    imported, metadata = load_checkpoint(out / "model.safetensors")
    assert imported.config == MODEL and metadata["source"] == "gpt-rs"
    ids = torch.tensor([tokenizer.encode(s, unknown="skip")[:16] for s in held_out])  # [10, 16]
    with torch.no_grad():
        assert torch.equal(imported(ids), model(ids))

    config = yaml.safe_load((out / "run_config.yaml").read_text())["ops"]
    assert config["bpe_tokenizer"]["config"] == {"vocab_size": 200}
    assert config["tokenized_dataset"]["config"] == {"training_percentage": 0.9}
    trained_model = config["trained_model"]["config"]
    assert {k: trained_model[k] for k in ("embedding_size", "block_count", "residual_dropout")} == {
        "embedding_size": 16, "block_count": 1, "residual_dropout": 0.05}
    assert (trained_model["learning_rate"], trained_model["training_iterations"]) == (3e-3, 15)


def test_imported_model_generates_what_the_original_does(tmp_path, trained):
    tokenizer, encoded, model, _ = trained
    gpt_rs = write_gpt_rs_run(tmp_path, tokenizer, encoded, model)
    run = files.import_gpt_rs_run(gpt_rs["dataset"], gpt_rs["config"], gpt_rs["checkpoint"], tmp_path / "out")
    imported, _ = load_checkpoint(run.model)
    config = GenerationConfig(prompts=("Once", "The dog"), token_count=12, seed=5)
    ours = generate_samples(model, tokenizer, config)
    theirs = generate_samples(imported, BPETokenizer.load(run.tokenizer), config)
    assert theirs["text"].to_list() == ours["text"].to_list()
    assert theirs["text"][0].startswith("Once")
    # without a train config the run config holds the model's settings only
    settings = yaml.safe_load(run.run_config.read_text())["ops"]["trained_model"]["config"]
    assert "learning_rate" not in settings and settings["context_length"] == 16


DATASET_RON = """// written by hand in gpt-rs's shape, merges out of order, chars escaped and raw
Dataset(
    char_to_id: {' ': 1, '"': 3, '\\n': 0, 'a': 5, 'b': 6, '!': 2, '\\'': 4},
    id_to_char: {0: '
', 1: ' ', 2: '!', 3: '"', 4: '\\'', 5: 'a', 6: 'b'},
    mergings: [
        (from: (1, 7), to: 8),
        (from: (5, 6), to: 7),   /* "ab" */
    ],
    encoded_data: [[8, 2, 0], [3, 7, 4, 3], []],
)
"""


def test_dataset_file_known_answer(tmp_path):
    path = tmp_path / "d.ron"
    path.write_text(DATASET_RON)
    dataset = files.read_dataset(path)
    assert dataset.tokenizer.alphabet == ["\n", " ", "!", '"', "'", "a", "b"]
    assert dataset.tokenizer.merges == [(5, 6), (1, 7)]
    assert [dataset.tokenizer.token_text(i) for i in (7, 8)] == ["ab", " ab"]
    assert dataset.encoded_data == [[8, 2, 0], [3, 7, 4, 3], []]
    assert [dataset.tokenizer.decode(ids) for ids in dataset.encoded_data] == [" ab!\n", "\"ab'\"", ""]
    # and back: our writer's file reads to the same objects
    text = files.dataset_to_ron(dataset.tokenizer, dataset.encoded_data)
    again = files.dataset_from_ron(files.ron.loads(text))
    assert again == dataset


@pytest.mark.parametrize(
    "edit, message",
    [
        (("'b': 6,", "'b': 7,"), "char_to_id and id_to_char disagree"),
        (("'a': 5, 'b': 6", "'a': 6, 'b': 5"), "char_to_id and id_to_char disagree"),
        (("1: ' ', 2: '!'", "2: ' ', 1: '!'"), "char_to_id and id_to_char disagree"),
        (("to: 8", "to: 9"), "merged token ids must be 7..8"),
        (("(1, 7)", "(7, 1)"), "merge 1 (7, 1) breaks gpt-rs's rules: its right token starts with a space"),
        (("(5, 6)", "(3, 6)"), "merge 0 (3, 6) breaks gpt-rs's rules: it involves a barrier"),
        (("[3, 7, 4, 3]", "[3, 7, 4, 9]"), "encoded_data[1] holds 9, not a token id below 9"),
        (("[8, 2, 0]", "[8, 2.0, 0]"), "encoded_data[0] is not a list of integer token ids"),
        (("mergings:", "merging:"), "not a gpt-rs dataset file, it lacks ['mergings']"),
        (("(from: (5, 6), to: 7)", "(5, 6, 7)"), "mergings[1] must be (from: (a, b), to: id)"),
        (("[8, 2, 0],", "[8, 2, 0]"), "line 10, column 30: expected ',' or ']', found '['"),
    ],
)
def test_bad_dataset_files_are_refused_with_the_reason(tmp_path, edit, message):
    old, new = edit
    assert old in DATASET_RON
    path = tmp_path / "bad.ron"
    path.write_text(DATASET_RON.replace(old, new, 1))
    with pytest.raises(ValueError, match=r"bad\.ron: .*" + re.escape(message)):
        files.read_dataset(path)


def test_character_ids_out_of_code_point_order_are_refused():
    value = files.ron.loads("(char_to_id: {'b': 0, 'a': 1}, id_to_char: {0: 'b', 1: 'a'}, mergings: [], "
                            "encoded_data: [])")
    with pytest.raises(ValueError, match="not in ascending code point order \\('b' = 0, 'a' = 1\\)"):
        files.dataset_from_ron(value, "d.ron")


def test_gpt_rs_example_configs_are_our_defaults(tmp_path):
    # the example files of gpt-rs's README, as its serde writes them (with and without a name)
    transformer = tmp_path / "transformer_config.ron"
    transformer.write_text("TransformerConfig(\n    vocab_size: 2048,\n    embedding_size: 128,\n"
                           "    context_length: 64,\n    head_count: 4,\n    block_count: 8,\n"
                           "    feed_forward_multiplier: 4,\n    embedding_dropout: 0.05,\n"
                           "    attention_dropout: 0.05,\n    feed_forward_dropout: 0.05,\n"
                           "    residual_dropout: 0.05,\n)\n")
    assert files.read_transformer_config(transformer) == GPTConfig()
    train_config = tmp_path / "train_config.ron"
    train_config.write_text("(learning_rate: 2e-4, training_iterations: 60000, evaluation_interval: 500, "
                            "evaluation_iterations: 5, contexts_per_batch: 64)")
    assert files.read_train_config(train_config) == TrainConfig()


def test_config_writers_known_answer_and_round_trip(tmp_path):
    config = GPTConfig(vocab_size=300, embedding_size=32, context_length=16, head_count=2, block_count=1,
                       feed_forward_multiplier=2, embedding_dropout=0.0, attention_dropout=0.1,
                       feed_forward_dropout=0.0, residual_dropout=0.0)
    assert files.transformer_config_to_ron(config) == (
        "(\n    vocab_size: 300,\n    embedding_size: 32,\n    context_length: 16,\n    head_count: 2,\n"
        "    block_count: 1,\n    feed_forward_multiplier: 2,\n    embedding_dropout: 0.0,\n"
        "    attention_dropout: 0.1,\n    feed_forward_dropout: 0.0,\n    residual_dropout: 0.0,\n)\n")
    assert files.read_transformer_config(write_transformer_config(tmp_path / "c.ron", config)) == config
    train_config = TrainConfig(learning_rate=1e-3, training_iterations=7, evaluation_interval=2,
                               evaluation_iterations=3, contexts_per_batch=5)
    text = files.train_config_to_ron(train_config)
    assert text == ("(\n    learning_rate: 0.001,\n    training_iterations: 7,\n    evaluation_interval: 2,\n"
                    "    evaluation_iterations: 3,\n    contexts_per_batch: 5,\n)\n")
    assert files.read_train_config(write_train_config(tmp_path / "t.ron", train_config)) == train_config


@pytest.mark.parametrize(
    "text, message",
    [
        ("(vocab_size: 10)", "GPTConfig keys do not match: unknown \\[\\], missing \\['attention_dropout'"),
        ("[1, 2]", "a transformer config must be a RON struct"),
        ("(vocab_size: 10, embedding_size: 8.0, context_length: 4, head_count: 2, block_count: 1, "
         "feed_forward_multiplier: 2, embedding_dropout: 0.0, attention_dropout: 0.0, "
         "feed_forward_dropout: 0.0, residual_dropout: 0.0)",
         "GPTConfig.embedding_size must be a positive integer, got 8.0"),
        ("(vocab_size: 10,", "line 1, column 17: expected a field name, found end of input"),
    ],
)
def test_bad_transformer_configs(tmp_path, text, message):
    path = tmp_path / "c.ron"
    path.write_text(text)
    with pytest.raises(ValueError, match="c.ron: " + message):
        files.read_transformer_config(path)


def test_bad_train_configs(tmp_path):
    path = tmp_path / "t.ron"
    path.write_text("(learning_rate: 1e-3, warmup_steps: 100)")
    with pytest.raises(ValueError, match=r"t.ron: unknown train config fields \['warmup_steps'\]"):
        files.read_train_config(path)
    path.write_text("(learning_rate: -1.0)")
    with pytest.raises(ValueError, match="t.ron: TrainConfig.learning_rate must be a finite number > 0"):
        files.read_train_config(path)
    path.write_text("(learning_rate: 1)")  # a whole number is a float field's value all the same
    assert math.isclose(files.read_train_config(path).learning_rate, 1.0)


def test_import_checks_everything_before_writing(tmp_path, trained):
    tokenizer, encoded, model, _ = trained
    gpt_rs = write_gpt_rs_run(tmp_path, tokenizer, encoded, model)
    out = tmp_path / "out"
    wrong = GPTConfig(**{**MODEL.to_dict(), "vocab_size": 201})
    write_transformer_config(tmp_path / "wrong.ron", wrong)
    with pytest.raises(ValueError, match="vocab_size is 201 but the dataset file's tokenizer has 200 tokens"):
        files.import_gpt_rs_run(gpt_rs["dataset"], tmp_path / "wrong.ron", gpt_rs["checkpoint"], out)
    other = GPTConfig(**{**MODEL.to_dict(), "embedding_size": 8})
    write_transformer_config(tmp_path / "other.ron", other)
    with pytest.raises(ValueError, match="has shape"):
        files.import_gpt_rs_run(gpt_rs["dataset"], tmp_path / "other.ron", gpt_rs["checkpoint"], out)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        files.import_gpt_rs_run(gpt_rs["dataset"], gpt_rs["config"], tmp_path / "missing.safetensors", out)
    with pytest.raises(FileNotFoundError, match="nope.ron"):
        files.import_gpt_rs_run(tmp_path / "nope.ron", gpt_rs["config"], gpt_rs["checkpoint"], out)
    with pytest.raises(ValueError, match="training_percentage"):
        files.import_gpt_rs_run(gpt_rs["dataset"], gpt_rs["config"], gpt_rs["checkpoint"], out,
                                training_percentage=1.5)
    assert not out.exists()


def test_ron_errors_surface_with_the_file_name(tmp_path):
    path = tmp_path / "broken.ron"
    path.write_text("(char_to_id: {'a': 0,,})")
    with pytest.raises(RonError, match="broken.ron: line 1, column 22: expected a value, found ','"):
        files.read_dataset(path)
