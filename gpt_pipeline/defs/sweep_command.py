"""``gpt-pipeline sweep``: the command's arguments; the work is ``defs.sweep_runner.run_sweep``.

Nothing heavy is imported with this module (Dagster and the assets load when a sweep runs), so
that adding the command costs the other commands nothing.
"""

from __future__ import annotations


def _sweep_command(args) -> None:
    # Ctrl-C and SIGTERM (cli._interruptible) stop the sweep in a line, exit status 130: the runs
    # it started end FAILURE, its processes get SIGTERM, its trial is released to resume later
    from gpt_pipeline.defs.sweep_runner import ranking_table, run_sweep

    def train_job():
        from gpt_pipeline.definitions import build_defs
        from gpt_pipeline.defs.io_manager import AssetFileIOManager
        from gpt_pipeline.defs.materialize import JOB

        return build_defs(AssetFileIOManager(base_url=args.storage_url)).resolve_job_def(JOB)

    rows, times = run_sweep(args.sweep, args.config, args.parallel, args.storage_url, train_job=train_job)
    print("\n" + ranking_table(rows))
    print(f"\nsweep wall time {times['total']:.1f} s (data {times['data']:.1f} s, variants "
          f"{times['variants']:.1f} s at --parallel {args.parallel}, champion {times['champion']:.1f} s)")
    if not any(row["rank"] for row in rows):
        raise RuntimeError("no variant produced a model: see the notes above")


def add_sweep_command(commands) -> None:
    """``gpt-pipeline sweep --sweep FILE [--config BASE] [--parallel N]``."""
    sweep = commands.add_parser(
        "sweep",
        help="materialize a sweep: the data once, the variants and search trials N at a time, then the champion",
        description="Run every variant and search trial of a sweep file in the Dagster instance at "
        "$DAGSTER_HOME (default: the project's dagster_home/): raw_stories, bpe_tokenizer and "
        "tokenized_dataset once, trained_model and sample_generations of each variant (N at a time, "
        "the cores divided among them; a search's trials as Optuna asks for them, losers pruned), "
        "then champion_model, and print the ranking of every variant by test bits per character.",
    )
    sweep.add_argument("--sweep", required=True, metavar="FILE", help="the sweep file (YAML: name, base, variants and/or search)")
    sweep.add_argument("--config", metavar="YAML", help="a run config over the sweep's base (ops: {asset: {config: ...}})")
    sweep.add_argument("--parallel", type=int, default=1, metavar="N", help="variants trained at once (default 1)")
    sweep.add_argument("--storage-url", metavar="URL", help="where assets are stored (as materialize's)")
    sweep.set_defaults(handler=_sweep_command)
