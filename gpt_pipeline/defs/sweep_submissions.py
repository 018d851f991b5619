"""Submitted sweeps: the record that ``sweep_sensor`` (``defs.sweep_sensor``) turns into runs.

``gpt-pipeline sweep`` and the job ``sweep_job`` check a sweep file whole (``defs.sweeps``: a bad
file is refused in one line before anything is written), then ``submit`` it: a JSON record under
the Dagster instance's folder, ``<instance root>/sweeps/<id>.json`` (written atomically), holding
the checked sweep itself (its name, base, variants and search), not the file's path: editing the
file later changes nothing already submitted. Its ``state`` is ``active`` until the sensor has
run the champion (``done``), the data assets failed (``failed``), or the command that submitted
it was stopped (``cancelled``: the sensor requests nothing more for it). ``owner`` names the
``gpt-pipeline sweep`` process that watches it (none for ``sweep_job``'s): an active submission
whose owner is gone was left by a command that was killed (``orphans``), and the next command of
that sweep takes it over (``defs.sweep_runner``).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from gpt_pipeline.defs.sweeps import Sweep, load_sweep, parse_sweep, read_run_config
from gpt_pipeline.defs.variants import DEFAULT_VARIANT, VariantError, read_variant, record_path
from gpt_pipeline.storage import atomic_write_text

ACTIVE, DONE, FAILED, CANCELLED = "active", "done", "failed", "cancelled"
SUBMISSION_TAG, STEP_TAG, TRIAL_TAG = "gpt_pipeline/submission", "gpt_pipeline/step", "gpt_pipeline/trial"


@dataclass
class Submission:
    id: str
    sweep: dict[str, Any]  # the checked sweep file's content, its base inlined
    user_config: dict[str, Any] = field(default_factory=dict)  # the run config given besides (--config)
    state: str = ACTIVE
    note: str = ""
    submitted: float = 0.0
    owner: dict[str, str] = field(default_factory=dict)  # the command's process (tracker._process_tags)

    def parsed(self) -> Sweep:
        return parse_sweep(self.sweep, self.sweep["name"], Path("."))


def _folder(instance: dg.DagsterInstance) -> Path:
    return Path(instance.root_directory) / "sweeps"


def check_sweep(sweep_file, base_config=None) -> tuple[Sweep, dict, dict]:
    """The sweep at ``sweep_file`` checked whole (``SweepError``, ``VariantError``, a study
    database that cannot be opened: ``ValueError`` in one line), its content with the base
    inlined, and the run config ``base_config`` (``{}`` when None)."""
    from gpt_pipeline.defs.search_trials import open_study
    from gpt_pipeline.defs.sweeps import variant_record

    sweep = load_sweep(sweep_file)
    user = read_run_config(base_config) if base_config is not None else {}
    for variant in sweep.variants:  # a listed variant recorded before with another config
        existing, wanted = read_variant(variant), variant_record(sweep, variant)
        if existing is not None and (existing.base, existing.overrides) != (wanted.base, wanted.overrides) and (
                variant != DEFAULT_VARIANT or record_path(variant).is_file()):
            raise VariantError(f"variant {variant!r} was trained with {existing.describe()} (sweep {existing.sweep}), "
                               f"not {wanted.describe()}: give the new configuration a name of its own")
    raw = yaml.safe_load(Path(sweep_file).read_text()) or {}
    content = {"name": sweep.name, "base": {"ops": {a: {"config": v} for a, v in sweep.base.items()}}}
    if sweep.variants:  # a search alone lists none
        content["variants"] = sweep.variants
    if sweep.search is not None:
        open_study(sweep.name, sweep.search.storage_url())
        content["search"] = raw["search"]
    return sweep, content, user


def submit(instance: dg.DagsterInstance, content: dict, user_config: dict, owner: dict | None = None) -> Submission:
    """Record a checked sweep (``check_sweep``) for the sensor; return its submission."""
    submission = Submission(f"{content['name'][:40]}-{uuid.uuid4().hex[:8]}", content, user_config,
                            submitted=time.time(), owner=owner or {})
    save(instance, submission)
    return submission


def orphans(instance: dg.DagsterInstance, name: str) -> list[Submission]:
    """The active submissions of sweep ``name`` whose command is gone (killed), newest first."""
    from gpt_pipeline.tracking.tracker import _process_alive

    found = [s for s in active(instance) if s.sweep["name"] == name and s.owner and not _process_alive(s.owner)]
    return found[::-1]


def save(instance: dg.DagsterInstance, submission: Submission) -> None:
    folder = _folder(instance)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{submission.id}.json", json.dumps(asdict(submission), indent=1, sort_keys=True))


def read(instance: dg.DagsterInstance, submission_id: str) -> Submission | None:
    path = _folder(instance) / f"{submission_id}.json"
    try:
        return Submission(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def active(instance: dg.DagsterInstance) -> list[Submission]:
    """The submissions the sensor still works on, oldest first."""
    found = []
    for path in sorted(_folder(instance).glob("*.json")) if _folder(instance).is_dir() else ():
        try:
            submission = Submission(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            continue  # not one of ours
        if submission.state == ACTIVE:
            found.append(submission)
    return sorted(found, key=lambda s: s.submitted)


def set_state(instance: dg.DagsterInstance, submission_id: str, state: str, note: str = "") -> None:
    """Move a submission to ``state`` (a cancelled one stays cancelled)."""
    submission = read(instance, submission_id)
    if submission is not None and submission.state != CANCELLED:
        submission.state, submission.note = state, note
        save(instance, submission)
