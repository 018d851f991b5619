"""``defs.materialize``: a run in process leaves the process's signal dispositions as they were."""

from __future__ import annotations

import signal

import dagster as dg

from gpt_pipeline.defs.materialize import materialize_run


@dg.asset
def _one() -> int:
    return 1


JOB = dg.Definitions(assets=[_one], jobs=[dg.define_asset_job("job")]).resolve_job_def("job")


def test_a_run_in_a_background_process_leaves_sigterm_as_it_was(tmp_path):
    """A background process ignores SIGINT. Dagster's own in-process run then leaves SIGTERM
    ignored too (for this process and every process it starts); ``materialize_run`` does not."""
    instance = dg.DagsterInstance.local_temp(str(tmp_path))
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `command &` in a shell without job control
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert JOB.execute_in_process(instance=instance).success
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # what Dagster does: what we undo
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        assert materialize_run(instance, JOB, {}, select="_one", quiet=True).success
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, sigterm)
