"""gpt_pipeline.defs.training_run: the trained_model asset's Dagster log tells how training goes,
and that a rematerialization resumed (from which step)."""

from __future__ import annotations

import dagster as dg

from gpt_pipeline.definitions import defs
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG, with_default_variant


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [record.user_message for record in instance.all_logs(run_id) if record.step_key == "trained_model"]


def test_dagster_log_shows_evaluations_and_the_resume(tmp_path, isolated_storage):
    job = defs.resolve_job_def("train_gpt_job")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        first = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default")
        assert first.success
        lines = _messages(instance, first.run_id)
        assert [m.split(":")[0] for m in lines if "train loss" in m] == ["step 0/40", "step 20/40", "step 40/40"]
        assert not any(m.startswith("resumed from") for m in lines)
        # same config, same data, same variant
        again = job.execute_in_process(run_config=TINY_RUN_CONFIG, instance=with_default_variant(instance), partition_key="default")
        assert again.success
        resumed = [m for m in _messages(instance, again.run_id) if m.startswith("resumed from")]
        assert len(resumed) == 1 and resumed[0].startswith("resumed from step 40/40 (checkpoint in ")
        assert "checkpoints/trained_model/default/" in resumed[0]  # the variant's own checkpoints


def test_character_counts_of_an_older_dataset_file_are_counted_from_its_tokens(tmp_path):
    """A dataset written before the character counts were recorded: counted from the tokens'
    texts (exact), with a warning."""
    import pyarrow.parquet as pq

    from gpt_pipeline.data.dataset_files import load_splits
    from gpt_pipeline.data.splits import build_dataset_table
    from gpt_pipeline.data.table_file import TableFile
    from gpt_pipeline.defs.training_run import split_character_counts
    from gpt_pipeline.tokenizer import BPETokenizer

    stories = ["the cat sat", "a hat", "the hat sat on the cat", "that"]
    tokenizer = BPETokenizer.train(stories, 20)
    path = tmp_path / "old.parquet"
    pq.write_table(build_dataset_table(tokenizer.encode_batch(stories), tokenizer.vocab_size, 0.75), path)
    table_file = TableFile(path)
    train, test = load_splits(table_file)
    context = dg.build_asset_context()
    counts = split_character_counts(context, table_file, train, test, tokenizer)
    assert counts == {"train": sum(map(len, stories[:3])), "test": len(stories[3])}
