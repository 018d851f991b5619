"""The data stages at scale: our streaming tokenizer against Hugging Face ``tokenizers`` on the
same corpus, and the peak memory of the three data assets materialized through Dagster.

Usage: .venv/bin/python benchmarks/bench_scale.py CORPUS_MB [--vocab-size 2048] [--runs 1]
       [--seed 0] [--cache-dir DIR] [--skip-assets] [--assets-from-generator]

1. The corpus: the embedded generator's stories (``seed``) until their UTF-8 text reaches
   CORPUS_MB megabytes (10**6 bytes), written once as Parquet under ``<data dir>/bench_scale/``
   (ignored by git) and reused by later runs. Generation speed is printed when it runs.
2. Each measurement runs in a fresh child process, so that its peak memory (the child's
   resident memory high-water mark, ``VmHWM``: interpreter and libraries included) is its own:
   - train: ours = ``BPETokenizer.train_from_batches`` over the file's record batches (reading
     included); tokenizers = a BPE model with ``BpeTrainer(vocab_size,
     initial_alphabet=<the corpus characters>)`` and the pre-tokenizer ``Split(Regex(PIECE_PATTERN),
     behavior="isolated")`` (gpt-rs's merge boundaries), fed the same record batches through
     ``train_from_iterator`` (the setup of ``bench_tokenizer.py``).
   - encode: every text, batch by batch (a 1 GB corpus's Encoding objects would not fit in
     memory at once): ours ``BPETokenizer.encode_flat`` against ``Tokenizer.encode_batch``
     with our exported ``tokenizer.json`` (the same merges, so the same ids; checked on the
     first batch). Only the encode calls are timed; both read the same batches.
   - assets: ``raw_stories`` (from the cached file as a user's Parquet, or with
     ``--assets-from-generator`` from the generator itself), ``bpe_tokenizer`` and
     ``tokenized_dataset``, each materialized with ``dg.materialize`` in its own child, in a
     temporary data directory and MLflow store.
   Train and encode runs alternate ours and theirs; with ``--runs N`` medians are printed.
3. Ratios ours / theirs below 1 mean we are faster or leaner.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH_ROWS = 16_384  # texts per record batch, for every tool
ASSETS = ("raw_stories", "bpe_tokenizer", "tokenized_dataset")


# --- the corpus ----------------------------------------------------------------------------------


def corpus_path(cache_dir: Path, megabytes: float, seed: int) -> Path:
    return cache_dir / f"corpus_{megabytes:g}mb_seed{seed}.parquet"


def make_corpus(path: Path, megabytes: float, seed: int) -> None:
    """The generator's first stories of ``seed`` whose text reaches ``megabytes`` MB."""
    from gpt_pipeline.data.corpus import iter_story_batches
    from gpt_pipeline.storage import atomic_write

    target = int(megabytes * 1e6)
    schema = pa.schema([("text", pa.large_string())])
    started = time.perf_counter()
    totals = {"bytes": 0, "stories": 0}

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in iter_story_batches(10**12, seed, BATCH_ROWS):
                array = pa.array(batch, pa.large_string())
                ends = pc.cumulative_sum(pc.binary_length(array)).to_numpy()
                need = target - totals["bytes"]
                keep = int((ends < need).sum()) + 1 if ends[-1] >= need else len(batch)
                writer.write_table(pa.table([array[:keep]], schema=schema))
                totals["bytes"] += int(ends[keep - 1])
                totals["stories"] += keep
                if totals["bytes"] >= target:
                    return

    atomic_write(path, write)
    seconds = time.perf_counter() - started
    mb = totals["bytes"] / 1e6
    print(f"generated {totals['stories']:,} stories, {mb:,.1f} MB in {seconds:.1f} s "
          f"({seconds / mb:.3f} s per MB, {mb / seconds:.1f} MB/s) -> {path}", flush=True)


def text_batches(path: Path):
    with pq.ParquetFile(path, pre_buffer=False) as handle:  # pre-buffering keeps the whole file
        for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=["text"]):
            yield batch.column(0)


# --- the children: one measurement each ------------------------------------------------------------


def child_ours_train(args) -> dict:
    from gpt_pipeline.tokenizer import BPETokenizer
    from gpt_pipeline.tokenizer.bundle import write_bundle

    started = time.perf_counter()
    tokenizer = BPETokenizer.train_from_batches(text_batches(args.corpus), args.vocab_size)
    seconds = time.perf_counter() - started
    write_bundle(tokenizer, args.work / "ours.json")  # + ours.vocab.txt, ours.hf.json
    return {"seconds": seconds, "vocab_size": tokenizer.vocab_size, "alphabet": len(tokenizer.alphabet)}


def child_hf_train(args) -> dict:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from gpt_pipeline.tokenizer import PIECE_PATTERN, BPETokenizer

    alphabet = BPETokenizer.load(args.work / "ours.json").alphabet  # the corpus characters (not timed)
    started = time.perf_counter()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator((batch.to_pylist() for batch in text_batches(args.corpus)), trainer)
    seconds = time.perf_counter() - started
    tok.save(str(args.work / "theirs.json"))
    return {"seconds": seconds, "vocab_size": tok.get_vocab_size()}


def child_ours_encode(args) -> dict:
    import polars as pl

    from gpt_pipeline.tokenizer import BPETokenizer

    tokenizer = BPETokenizer.load(args.work / "ours.json")
    seconds, tokens, texts = 0.0, 0, 0
    for batch in text_batches(args.corpus):
        series = pl.Series(batch)
        started = time.perf_counter()
        ids, _ = tokenizer.encode_flat(series)
        seconds += time.perf_counter() - started
        tokens += len(ids)
        texts += len(series)
    return {"seconds": seconds, "tokens": tokens, "texts": texts}


def child_hf_encode(args) -> dict:
    from tokenizers import Tokenizer

    from gpt_pipeline.tokenizer import BPETokenizer

    tokenizer = Tokenizer.from_file(str(args.work / "ours.hf.json"))
    ours = BPETokenizer.load(args.work / "ours.json")
    seconds, tokens, texts, checked = 0.0, 0, 0, None
    for batch in text_batches(args.corpus):
        strings = batch.to_pylist()
        started = time.perf_counter()
        encodings = tokenizer.encode_batch(strings)
        seconds += time.perf_counter() - started
        if checked is None:  # same merges, same ids: the comparison is like for like
            checked = [e.ids for e in encodings] == ours.encode_batch(strings)
        tokens += sum(len(e) for e in encodings)
        texts += len(strings)
        del encodings
    return {"seconds": seconds, "tokens": tokens, "texts": texts, "same_ids_first_batch": checked}


def child_asset(args) -> dict:
    import dagster as dg

    from gpt_pipeline.defs.assets import ASSETS as ALL_ASSETS
    from gpt_pipeline.defs.io_manager import AssetFileIOManager
    from gpt_pipeline.defs.resources import MLflowResource

    if args.assets_from_generator:
        rows = pq.ParquetFile(args.corpus).metadata.num_rows
        raw = {"num_stories": rows, "seed": args.seed}
    else:
        raw = {"path": str(args.corpus)}
    config = {
        "raw_stories": raw,
        "bpe_tokenizer": {"vocab_size": args.vocab_size},
        "tokenized_dataset": {},
    }[args.asset]
    started = time.perf_counter()
    result = dg.materialize(
        ALL_ASSETS,
        selection=[args.asset],
        resources={"io_manager": AssetFileIOManager(), "mlflow": MLflowResource()},
        run_config={"ops": {args.asset: {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    seconds = time.perf_counter() - started
    error = None
    if not result.success:
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        error = failure.step_failure_data.error.message.strip().splitlines()[0] if failure else "failed"
    files = {p.name: p.stat().st_size for p in Path(os.environ["GPT_PIPELINE_DATA_DIR"]).glob(f"{args.asset}*")}
    return {"seconds": seconds, "success": result.success, "error": error, "files": files}


CHILDREN = {
    "ours-train": child_ours_train,
    "hf-train": child_hf_train,
    "ours-encode": child_ours_encode,
    "hf-encode": child_hf_encode,
    "asset": child_asset,
}


# --- the parent --------------------------------------------------------------------------------------


def run_child(task: str, args, extra: list[str] = (), env: dict | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its result plus its peak resident memory."""
    command = [
        sys.executable, __file__, "--child", task, "--corpus", str(args.corpus), "--work", str(args.work),
        "--vocab-size", str(args.vocab_size), "--seed", str(args.seed), *extra,
    ]
    if args.assets_from_generator:
        command.append("--assets-from-generator")
    out = args.work / f"{task}.json"
    command += ["--out", str(out)]
    log = args.work / f"{task}{'-' + extra[-1] if extra else ''}.log"
    started = time.perf_counter()
    with open(log, "w") as handle:  # Dagster's event log and the like, shown only on failure
        code = subprocess.call(command, env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if code != 0:
        sys.stderr.write(log.read_text()[-5000:])
        raise SystemExit(f"{task} {' '.join(extra)} failed with exit code {code}")
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


def peak_resident_mb() -> float:
    """This process's peak resident memory since it started, in MB.

    Linux's ``VmHWM`` (the high-water mark of this program's memory, reset by exec). The
    ``ru_maxrss`` that ``wait4`` reports for a child would also count the parent's memory at
    the fork, so it is only the fallback elsewhere.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus_mb", nargs="?", type=float, help="corpus size in MB of UTF-8 text")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--runs", type=int, default=1, help="train and encode runs (medians)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed of the corpus")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: <data dir>/bench_scale")
    parser.add_argument("--skip-assets", action="store_true", help="only the tokenizer comparison")
    parser.add_argument("--skip-tokenizers", action="store_true", help="only the data assets")
    parser.add_argument("--assets-from-generator", action="store_true",
                        help="raw_stories generates the corpus itself instead of reading the cached file")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--asset", choices=ASSETS, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.vocab_size is None:
        from gpt_pipeline.tokenizer.config import TokenizerConfig

        args.vocab_size = TokenizerConfig().vocab_size

    if args.child:
        result = CHILDREN[args.child](args)
        result["peak_mb"] = peak_resident_mb()
        args.out.write_text(json.dumps(result))
        return
    if args.corpus_mb is None or args.corpus_mb <= 0:
        parser.error("give the corpus size in MB (a number > 0)")
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        sys.exit("this benchmark needs Hugging Face tokenizers (pip install -e '.[test]')")

    from gpt_pipeline.storage import data_dir

    cache = args.cache_dir or data_dir() / "bench_scale"
    args.corpus = corpus_path(cache, args.corpus_mb, args.seed)
    if not args.corpus.exists():
        make_corpus(args.corpus, args.corpus_mb, args.seed)
    meta = pq.ParquetFile(args.corpus).metadata
    size = args.corpus.stat().st_size / 1e6
    print(f"corpus: {args.corpus} ({meta.num_rows:,} stories, {meta.num_row_groups} row groups, "
          f"{size:,.1f} MB on disk); vocab_size {args.vocab_size}; {os.cpu_count()} CPUs; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_scale.") as tmp:
        args.work = Path(tmp)
        results: dict[str, list[dict]] = {}
        if not args.skip_tokenizers:
            for run in range(args.runs):
                order = ("ours", "hf") if run % 2 == 0 else ("hf", "ours")
                if run == 0:  # hf-train needs our alphabet (its initial_alphabet)
                    order = ("ours", "hf")
                for who in order:
                    results.setdefault(f"{who}-train", []).append(run_child(f"{who}-train", args))
                    print(f"  {who}-train: {_line(results[f'{who}-train'][-1])}", flush=True)
                for who in order:
                    results.setdefault(f"{who}-encode", []).append(run_child(f"{who}-encode", args))
                    print(f"  {who}-encode: {_line(results[f'{who}-encode'][-1])}", flush=True)
            merges_equal = _same_merges(args.work)
            print(f"\nour merges vs tokenizers' merges: {merges_equal}")
            for stage in ("train", "encode"):
                ours, theirs = results[f"ours-{stage}"], results[f"hf-{stage}"]
                t_ours = statistics.median(r["seconds"] for r in ours)
                t_hf = statistics.median(r["seconds"] for r in theirs)
                m_ours = statistics.median(r["peak_mb"] for r in ours)
                m_hf = statistics.median(r["peak_mb"] for r in theirs)
                print(f"{stage:>6}: ours {t_ours:8.2f} s {m_ours:8.0f} MB peak | tokenizers {t_hf:8.2f} s "
                      f"{m_hf:8.0f} MB peak | time ratio ours/theirs {t_ours / t_hf:5.2f}, "
                      f"memory ratio {m_ours / m_hf:5.2f}  ({len(ours)} runs)")
        if not args.skip_assets:
            data = args.work / "data"
            env = {
                "GPT_PIPELINE_DATA_DIR": str(data),
                "MLFLOW_TRACKING_URI": f"sqlite:///{args.work / 'mlflow.db'}",
                "DAGSTER_HOME": "",
            }
            print()
            peak = 0.0
            for asset in ASSETS:
                result = run_child("asset", args, ["--asset", asset], env)
                peak = max(peak, result["peak_mb"])
                status = "ok" if result["success"] else f"FAILED: {result['error']}"
                files = ", ".join(f"{name} {size / 1e6:,.1f} MB" for name, size in sorted(result["files"].items()))
                print(f"asset {asset:>17}: {result['seconds']:8.1f} s, peak {result['peak_mb']:8.0f} MB, "
                      f"{status}; {files}", flush=True)
            print(f"data assets peak memory: {peak:,.0f} MB (target < 4,096 MB)")


def _line(result: dict) -> str:
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()}
    return json.dumps(shown)


def _same_merges(work: Path) -> str:
    """Whether tokenizers learnt the same merges as we did (informative: tie-breaking differs)."""
    from gpt_pipeline.tokenizer import BPETokenizer

    ours = BPETokenizer.load(work / "ours.json")
    theirs = json.loads((work / "theirs.json").read_text())["model"]["merges"]
    ours_text = [[ours.token_text(a), ours.token_text(b)] for a, b in ours.merges]
    theirs = [m.split(" ", 1) if isinstance(m, str) else m for m in theirs]
    same = sum(1 for a, b in zip(ours_text, theirs) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(ours_text, theirs)) if a != b), None)
    return f"{same} of {len(ours_text)} identical at the same rank" + (
        f" (first difference at merge {first})" if first is not None else ""
    )


if __name__ == "__main__":
    main()
