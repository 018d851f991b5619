"""gpt_pipeline: gpt-rs (a causal decoder transformer and a BPE tokenizer) as Dagster assets.

The core (``data``, ``tokenizer``, ``model``, ``training``, ``evaluation``, ``interop``, with
``fields``, ``storage``, ``provenance``, ``quality``, ``devices``) is plain Python and PyTorch. The
orchestration layer (``defs``, ``tracking``, ``definitions``) and the CLI wrap it for Dagster and MLflow.
"""

__version__ = "0.1.0"
