"""The first hour, as a new user meets it: ``gpt-pipeline materialize`` as ``make run`` runs it
(a tiny config), then the two UIs in headless Chromium, looked at.

What the terminal shows: one headline per asset, the training's progress, the two stories, no
Dagster debug lines. What the pages show, in a real browser against ``dg dev`` and ``mlflow ui``
on 127.0.0.1: the asset graph, ``trained_model``'s loss history table, ``champion_model``'s
standings, the Launchpad of ``train_gpt_job`` opening with the quickstart config, the MLflow
experiment listing the training runs and one training run. Screenshots of each go to
``SCREENSHOTS`` (printed), for people to look at.

The browser test needs a Chromium (Debian's ``chromium``, which ``.ci/run`` installs) and
Playwright (the test extra) driving it through its executable path; without them it is skipped
in one line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from gpt_pipeline.defs.local_instance import LOCAL_INSTANCE_YAML
from gpt_pipeline.defs.resources import WORKFLOW_QUERY
from gpt_pipeline_tests.server_processes import (
    BIN,
    MARKER,
    _free_port,
    _graphql,
    _http_json,
    _start,
    _stop,
    _tail,
    _wait_all_exited,
    _wait_for,
)
from gpt_pipeline_tests.tiny_config import TINY_RUN_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("GPT_PIPELINE_SCREENSHOTS", REPO_ROOT / "test-screenshots" / "first_hour"))
CHROMIUM = os.environ.get("GPT_PIPELINE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ASSETS = ["raw_stories", "bpe_tokenizer", "tokenized_dataset", "trained_model[default]",
          "sample_generations[default]", "model_evaluation[default]", "champion_model", "champion_generations",
          "champion_evaluation"]
LOCATION_QUERY = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder after ``gpt-pipeline materialize`` (the tiny config) with the environment
    ``make run`` gives it: its Dagster home, data and MLflow store, the command's output."""
    root = tmp_path_factory.mktemp("first_hour")
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text(  # the Makefile's
        LOCAL_INSTANCE_YAML)
    mlflow_port = _free_port()  # the MLflow UI the metadata links to (and shows the loss curve from)
    (root / "tiny.yaml").write_text(yaml.safe_dump(
        {**TINY_RUN_CONFIG, "resources": {"mlflow": {"config": {"ui_url": f"http://127.0.0.1:{mlflow_port}"}}}}))
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "GPT_PIPELINE_DATA_DIR": str(root / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", "PYTHONUNBUFFERED": "1",
           # as `make run` sets them
           "MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    env.pop("GPT_PIPELINE_SWEEP", None)
    done = subprocess.run([sys.executable, "-m", "gpt_pipeline", "materialize", "--config", str(root / "tiny.yaml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, env, done, mlflow_port


def test_materialize_prints_what_a_user_reads(project):
    _, _, done, _ = project
    lines = done.stdout.splitlines()
    headlines = [line for line in lines if re.match(r"^[a-z_]+(\[\w+\])?: ", line)]
    assert sorted(line.split(": ")[0] for line in headlines) == sorted(ASSETS), done.stdout  # one each
    trained = next(line for line in headlines if line.startswith("trained_model"))
    assert re.search(r"test loss \d\.\d{4} \(unigram \d\.\d{4}\), test bits per character \d\.\d{4}, "
                     r"40 steps in [\d.]+ s, [\d,]+ tokens/s$", trained), trained
    assert "models:/gpt-pipeline@champion" in next(line for line in headlines if line.startswith("champion_model"))
    progress = [line for line in lines if line.startswith("  step ")]
    assert progress and progress[-1].startswith("  step 40/40: train loss"), done.stdout
    assert [line for line in lines if line.startswith("=== ")] == ["=== 'Once' (sample 0) ===",
                                                                   "=== 'The dog' (sample 0) ==="]
    assert lines[-1].startswith("Dagster run ") and "succeeded" in lines[-1]
    for text in (done.stdout, done.stderr):  # no Dagster event or debug lines, no MLflow chatter
        assert "DEBUG" not in text and " - STEP_" not in text and "INFO" not in text, text[-2000:]
    assert len(lines) < 40, done.stdout


def _launchpad_yaml(page) -> str:
    """The Launchpad editor's whole text (CodeMirror renders only the lines in view)."""
    return page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install chromium; .ci/run does)")
def test_the_uis_show_what_the_readme_says(project):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (test extra)")
    root, env, _, mlflow_port = project
    started = time.monotonic()
    deadline = started + 240  # for the servers to answer (dg dev loads in 10-15 s on a quiet machine)
    token = uuid.uuid4().hex
    env = {**env, MARKER: token, "VIRTUAL_ENV": str(BIN.parent), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    dagster_port = _free_port()
    dagster_log, mlflow_log = root / "dg.log", root / "mlflow.log"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    servers = []
    try:
        # as `make dagster-ui` and `make mlflow-ui` start them
        servers.append(dagster := _start([str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(dagster_port)],
                                         env, dagster_log, REPO_ROOT))
        servers.append(mlflow := _start(
            [str(BIN / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
             "--backend-store-uri", env["MLFLOW_TRACKING_URI"]], env, mlflow_log, root))
        _wait_for("dg dev loads the code location", lambda: all(
            e["loadStatus"] == "LOADED" for e in _graphql(dagster_port, LOCATION_QUERY)["workspaceOrError"]["locationEntries"]),
            deadline, dagster, dagster_log)
        experiment = _wait_for("mlflow ui answers", lambda: _http_json(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=gpt-pipeline"),
            deadline, mlflow, mlflow_log)["experiment"]["experiment_id"]
        runs = _http_json(f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search",
                          {"experiment_ids": [experiment], "filter": "tags.`dagster.asset_key` = 'trained_model'"})["runs"]
        training_run = runs[0]["info"]["run_id"]
        dagster_url, mlflow_url = f"http://127.0.0.1:{dagster_port}", f"http://127.0.0.1:{mlflow_port}"

        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)

            def shot(name: str, height: int = 900) -> None:
                page.wait_for_timeout(800)  # let the last requests paint
                skip = page.get_by_role("button", name="Skip")  # Dagster's first-visit "Join the community"
                if skip.count() and skip.first.is_visible():
                    skip.first.click()  # as a user would
                    page.wait_for_timeout(300)
                page.set_viewport_size({"width": 1440, "height": height})  # Dagster scrolls inside its panes
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                page.set_viewport_size({"width": 1440, "height": 900})

            def visit(url: str, *texts: str) -> None:
                page.goto(url)
                for text in texts:
                    page.get_by_text(text, exact=True).first.wait_for()

            try:
                # The asset graph: every asset of the lineage, the source included.
                visit(f"{dagster_url}/locations/gpt_pipeline/asset-groups/gpt", "stories_source", "trained_model", "champion_model")
                try:  # Dagster's first-visit dialog comes a moment after the page: shot() skips it
                    page.get_by_role("button", name="Skip").first.wait_for(timeout=15_000)
                except playwright_api.TimeoutError:
                    pass
                shot("dagster_asset_graph")

                # trained_model: the loss history as an inline table (no raw JSON), figures rounded.
                visit(f"{dagster_url}/assets/trained_model?view=overview", "loss_history")
                body = page.inner_text("body")
                assert re.search(r"step\s+train_loss\s+test_loss", body), body[:3000]
                assert re.search(r"\n40\s+\d\.\d{4}\s+\d\.\d{4}", body), body[:3000]
                assert '"train_loss"' not in body and "resumed_from_step" not in body  # nothing resumed
                # the loss curve in place: the picture MLflow serves, loaded
                _wait_for("the loss curve shows", lambda: page.evaluate(
                    "() => [...document.images].some(i => i.src.includes('get-artifact?path=loss_curve_small.png') "
                    "&& i.complete && i.naturalWidth > 300)"), time.monotonic() + 60, mlflow, mlflow_log)
                shot("dagster_trained_model", 2300)

                # champion_model: the standings, every column in view (inside the metadata cell).
                visit(f"{dagster_url}/assets/champion_model?view=overview", "standings", "variants")
                for header in ("tokens/s", "overrides / note"):
                    right_edges = page.evaluate(
                        """(text) => { const th = [...document.querySelectorAll('th')].find(e => e.innerText.trim() === text);
                                       const cell = th.closest('table').parentElement.closest('td');
                                       return [th.getBoundingClientRect().right, cell.getBoundingClientRect().right]; }""",
                        header)
                    assert right_edges[0] <= right_edges[1], (header, right_edges)  # not cut off on the right
                assert "e+0" not in page.inner_text("body")
                shot("dagster_champion_model", 1500)

                # The Launchpad of train_gpt_job opens with the quickstart config, no partition picked.
                page.goto(f"{dagster_url}/locations/gpt_pipeline/jobs/train_gpt_job/playground")
                page.locator(".CodeMirror").first.wait_for()
                _wait_for("the Launchpad's config", lambda: "training_iterations" in _launchpad_yaml(page),
                          time.monotonic() + 60, dagster, dagster_log)
                opened = yaml.safe_load(_launchpad_yaml(page))["ops"]
                quickstart = yaml.safe_load((REPO_ROOT / "configs" / "quickstart.yaml").read_text())["ops"]
                for asset, values in quickstart.items():
                    assert {k: opened[asset]["config"][k] for k in values["config"]} == values["config"], asset
                shot("dagster_launchpad")

                # MLflow: the experiment as Dagster's run links and `make run` open it (the
                # model-training view, defs.resources.WORKFLOW_QUERY): its training runs, where the
                # trainings are the children of the sweep's parent run (README, Experiments).
                page.goto(f"{mlflow_url}/#/experiments/{experiment}?{WORKFLOW_QUERY}")
                page.get_by_text(re.compile(r"sweep-default@")).first.wait_for(timeout=60_000)
                page.wait_for_timeout(2000)
                landing = page.url
                body = page.inner_text("body")
                assert "tokenized_dataset-default-" in body and "champion_generations-default-" in body, body[:2000]
                shot("mlflow_experiment")
                page.goto(f"{mlflow_url}/#/experiments/{experiment}/runs/{training_run}")
                page.get_by_text(re.compile(r"trained_model-default-")).first.wait_for(timeout=60_000)
                page.get_by_text("test_loss").first.wait_for()
                shot("mlflow_training_run", 1400)
            except Exception:
                page.screenshot(path=str(SCREENSHOTS / "failed_here.png"), full_page=True)  # for the reader
                raise
            browser.close()
        print(f"\nthe MLflow experiment opened on {landing.split('#', 1)[-1]}")
    finally:
        for server in servers:
            _stop(server)
        leaked = _wait_all_exited(token)
    assert not leaked, leaked
    print(f"\nscreenshots in {SCREENSHOTS} ({time.monotonic() - started:.0f} s)")
    assert {p.name for p in SCREENSHOTS.glob("*.png")} >= set(
        ["dagster_asset_graph.png", "dagster_trained_model.png", "dagster_champion_model.png",
         "dagster_launchpad.png", "mlflow_experiment.png",
         "mlflow_training_run.png"])


# --- Every shell command of README.md and docs/*.md: run as written, or skipped for a reason --------

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_FENCE = re.compile(r"^```(sh|bash|shell)\s*\n(.*?)^```", re.MULTILINE | re.DOTALL)
MINUTES = "minutes of CPU training"
COMMAND_PLAN: list[tuple[str, str | None]] = [  # (regex matching a command, None: run it | why not)
    (r"^make run\b", "minutes: it runs `gpt-pipeline materialize --config configs/quickstart.yaml`, run above with the "
                     "tiny config by test_materialize_prints_what_a_user_reads"),
    (r"^make test\b", "the whole test suite, which holds this test"),
    (r"^make (dagster|mlflow)-ui\b", "a server: started as it starts them by test_the_uis_show_what_the_readme_says"),
    (r"^make sweep\b|^gpt-pipeline sweep\b", MINUTES + " (every variant of configs/sweep.yaml): test_sweep_runner"),
    (r"^gpt-pipeline materialize --config configs/quickstart\.yaml", MINUTES + " (the tiny config runs above)"),
    (r"^gpt-pipeline train .*--training-iterations 2000", MINUTES + " (gpt-rs's model, 2000 steps): test_cli trains it small"),
    (r"^gpt-pipeline generate --model training/run1/", "needs the 2000-step training above"),
    (r"^gpt-pipeline (generate|tokenize|compare)\b", None),
    (r"^gpt-pipeline (import-gpt-rs|export-hf) \.\.\.", "placeholder arguments (`...`); each has --help and tests"),
    (r"^\.venv/bin/gpt-pipeline export-hf ", None),
    (r"benchmarks/gpu_check\.py", "needs a CUDA GPU"),
    (r"-m gpt_pipeline materialize --job evaluate_job\b", "evaluates the quickstart model of `make run` again with "
     "the default settings, which the tiny model here fails by design (defs/test_evaluation.py runs a failing and a passing model)"),
    (r"-m gpt_pipeline compare --by\b", "the quickstart's figures: tracking/test_compare_by.py ranks by an evaluation figure"),
    (r"tinystories_sample\.parquet|/tmp/rs\d*/", "gpt-rs's example model on ../shared/data, which the tests "
     "never need: an hour of training"),
    (r"^(\.venv/bin/)?python .*benchmarks/|^PYTHONPATH=\S+ \.venv/bin/python benchmarks/|^OMP_NUM_THREADS=\d+ \S*python benchmarks/",
     "a benchmark: minutes, timed on a quiet machine (docs/benchmarks.md)"),
    (r"^mlflow server .*postgresql", "needs the PostgreSQL and S3 of a deployment: test_deployment_postgres"),
    (r"^make postgres-test\b", "the deployment tests, their own target"),
    (r"^make serve\b|mlflow models serve|^curl .*/invocations", "a model server: tracking/test_serving.py serves and calls it"),
]


def _without_comment(command: str) -> str:
    """``command`` up to its first `` #`` that is outside quotes."""
    for match in re.finditer(r"\s#", command):
        try:
            shlex.split(command[:match.start()])
        except ValueError:  # inside a quote
            continue
        return command[:match.start()].rstrip()
    return command


def doc_commands() -> list[tuple[str, str]]:
    """(document, command) for every command in a sh/bash/shell fence: continuation lines (a
    trailing backslash, an open quote) joined, comments dropped."""
    found = []
    for doc in DOCS:
        for _, block in SHELL_FENCE.findall(doc.read_text()):
            pending = ""
            for line in block.replace("\\\n", " ").splitlines():
                pending = f"{pending}\n{line}" if pending else line.strip()
                try:
                    shlex.split(pending, comments=True)
                except ValueError:  # a quote still open: the command goes on
                    continue
                command = "" if pending.startswith("#") else _without_comment(pending)
                pending = ""
                if command:
                    found.append((doc.relative_to(REPO_ROOT).as_posix(), re.sub(r"[ \t]+", " ", command)))
    return found


def _plan(command: str) -> tuple[bool, str | None]:
    for pattern, reason in COMMAND_PLAN:
        if re.search(pattern, command):
            return True, reason
    return False, None


def test_every_documented_command_is_run_or_skipped_with_a_reason():
    unplanned = [f"{doc}: {command}" for doc, command in doc_commands() if not _plan(command)[0]]
    assert not unplanned, "commands the docs gained: run them below or give a reason:\n" + "\n".join(unplanned)


def test_readme_and_docs_commands_run_as_written(project):
    """In a project folder after a materialization (data/, mlruns/, .venv as a link to this one),
    each command to run runs with .venv/bin first on PATH and exits 0; the skipped ones are printed
    one a line with why."""
    root, env, _, _ = project
    (root / ".venv").exists() or (root / ".venv").symlink_to(BIN.parent)
    env = {**env, "PATH": f"{root / '.venv' / 'bin'}:{env['PATH']}"}
    skipped = []
    for doc, command in doc_commands():
        reason = _plan(command)[1]
        if reason is not None:
            skipped.append(f"skipped {doc}: {command[:70]}: {reason}")
            continue
        done = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, f"{doc}: {command}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
    print("\n" + "\n".join(skipped))
    assert (root / "datasets" / "d512" / "bpe_tokenizer.json").is_file()
