"""``gpt-pipeline sweep``: the command's arguments; the work is ``defs.sweep_runner.run_sweep``.

Nothing heavy is imported with this module (Dagster and the assets load when a sweep runs), so
that adding the command costs the other commands nothing.

There is no ``--parallel``: how many variants and trials train at once is the Dagster pool
``training``'s limit (one by default; ``dagster instance concurrency set training N`` or the UI's
Concurrency page), which every run of the instance obeys, not only this sweep's.
"""

from __future__ import annotations


def _sweep_command(args) -> None:
    # Ctrl-C and SIGTERM (cli._interruptible) cancel the sweep in a line, exit status 130: its
    # queued runs canceled, its started runs terminated, its trial released to resume later
    from gpt_pipeline.defs.sweep_runner import ranking_table, run_sweep

    rows, times = run_sweep(args.sweep, args.config)
    print("\n" + ranking_table(rows))
    print(f"\nsweep wall time {times['total']:.1f} s (runs: data {times['data']:.1f} s, variants and trials "
          f"{times['variants']:.1f} s, champion {times['champion']:.1f} s)")
    if not any(row["rank"] for row in rows):
        raise RuntimeError("no variant produced a model: see the notes above")


def add_sweep_command(commands) -> None:
    """``gpt-pipeline sweep --sweep FILE [--config BASE]``."""
    sweep = commands.add_parser(
        "sweep",
        help="submit a sweep to Dagster: the data once, the variants and search trials, then the champion",
        description="Submit every variant and search trial of a sweep file to the Dagster instance at "
        "$DAGSTER_HOME (default: the project's dagster_home/), as queued runs that the daemon "
        "(started for the sweep when none serves the instance) launches: raw_stories, bpe_tokenizer "
        "and tokenized_dataset once, trained_model and sample_generations of each variant (as many at "
        "once as the pool 'training' allows; a search's trials as Optuna asks for them, losers "
        "pruned), then champion_model; print the standings as runs end and the ranking of every "
        "variant by test bits per character. Ctrl-C cancels the sweep's runs.",
    )
    sweep.add_argument("--sweep", required=True, metavar="FILE", help="the sweep file (YAML: name, base, variants and/or search)")
    sweep.add_argument("--config", metavar="YAML", help="a run config over the sweep's base (ops: {asset: {config: ...}})")
    sweep.set_defaults(handler=_sweep_command)
