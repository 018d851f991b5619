"""gpt_pipeline: gpt-rs (a causal decoder transformer and a BPE tokenizer) as Dagster assets.

The core (``tokenizer``, ``model``, ``training``, ``generation``, ``data``, ``corpus``,
``checkpoint``, ``storage``) is plain Python and PyTorch. The orchestration layer
(``gpt_pipeline.defs``, ``gpt_pipeline.definitions``) and the CLI wrap it for Dagster and MLflow.
"""

__version__ = "0.1.0"
