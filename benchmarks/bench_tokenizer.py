"""Our BPE tokenizer against Hugging Face ``tokenizers`` on the same texts, in the same run.

Usage: python benchmarks/bench_tokenizer.py [PARQUET] [--column text] [--vocab-size 2048] [--runs 5]

Without PARQUET it uses the embedded corpus (``gpt_pipeline.data.corpus.generate_stories()``).
Training: ``BPETokenizer.train(texts, vocab_size)`` against a ``tokenizers`` BPE model with
``BpeTrainer(vocab_size, initial_alphabet=<the corpus characters>)`` and the pre-tokenizer
``Split(Regex(PIECE_PATTERN), behavior="isolated")`` (gpt-rs's merge boundaries).
Encoding: ``BPETokenizer.encode_batch(texts)`` (-> list of id lists) against
``Tokenizer.encode_batch(texts)`` (-> Encoding objects; their ids are not even read). Both start
cold in every run: a fresh ``BPETokenizer`` from the learnt merges, a fresh ``Tokenizer`` from
the trained one's JSON, so neither profits from piece caches filled by a previous run. Runs
alternate ours and theirs; the medians of ``--runs`` runs and the ratios are printed. It also
checks that our ``tokenizer.json`` export encodes every text exactly as we do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import polars as pl

from gpt_pipeline.tokenizer import PIECE_PATTERN, BPETokenizer


def load_texts(parquet: str | None, column: str | None) -> tuple[list[str], str]:
    if parquet is None:
        try:
            from gpt_pipeline.data.corpus import generate_stories
        except ImportError:
            sys.exit("no PARQUET given and gpt_pipeline.data.corpus is missing; pass a Parquet file")
        return generate_stories(), "the embedded corpus (gpt_pipeline.data.corpus.generate_stories())"
    frame = pl.read_parquet(parquet)
    series = frame[column] if column else frame.to_series(0)
    return series.drop_nulls().filter(series.drop_nulls() != "").to_list(), str(Path(parquet).name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parquet", nargs="?", help="Parquet file of texts (default: the embedded corpus)")
    parser.add_argument("--column", help="text column (default: the first column, as gpt-rs)")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    try:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        sys.exit("this benchmark needs Hugging Face tokenizers (pip install -e '.[test]')")

    texts, name = load_texts(args.parquet, args.column)
    alphabet = sorted(set().union(*map(set, texts)))  # the peer's initial_alphabet (not timed)
    print(f"{name}: {len(texts):,} texts, {sum(map(len, texts)):,} characters, {len(alphabet)} distinct; "
          f"vocab_size {args.vocab_size}, {args.runs} runs")

    def hf_train() -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE_PATTERN), behavior="isolated")
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size, initial_alphabet=alphabet, show_progress=False
        )
        tok.train_from_iterator(texts, trainer)
        return tok

    times: dict[str, list[float]] = {"ours train": [], "hf train": [], "ours encode": [], "hf encode": []}

    def timed(key, fn, *a):
        start = time.perf_counter()
        result = fn(*a)
        times[key].append(time.perf_counter() - start)
        return result

    for run in range(args.runs):
        first_ours = run % 2 == 0
        for who in ("ours", "hf") if first_ours else ("hf", "ours"):
            if who == "ours":
                ours = timed("ours train", BPETokenizer.train, texts, args.vocab_size)
            else:
                hf = timed("hf train", hf_train)
        fresh_ours = BPETokenizer(ours.alphabet, ours.merges)
        fresh_hf = Tokenizer.from_str(hf.to_str())
        for who in ("ours", "hf") if first_ours else ("hf", "ours"):
            if who == "ours":
                ids = timed("ours encode", fresh_ours.encode_batch, texts)
            else:
                timed("hf encode", fresh_hf.encode_batch, texts)

    exported = Tokenizer.from_str(ours.to_hf_json())
    same = [e.ids for e in exported.encode_batch(texts)] == ids
    print(f"our tokenizer.json in tokenizers: {'identical ids on every text' if same else 'DIFFERENT ids'}")
    median = {key: statistics.median(values) for key, values in times.items()}
    for stage in ("train", "encode"):
        ratio = median[f"ours {stage}"] / median[f"hf {stage}"]
        print(f"{stage:>6}: ours {median[f'ours {stage}']:.3f} s, tokenizers {median[f'hf {stage}']:.3f} s, "
              f"ratio {ratio:.2f}  (runs: ours {' '.join(f'{t:.3f}' for t in times[f'ours {stage}'])}; "
              f"tokenizers {' '.join(f'{t:.3f}' for t in times[f'hf {stage}'])})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
