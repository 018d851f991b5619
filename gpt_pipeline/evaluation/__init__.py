"""Judging a model by its stories, not only its loss: likelihood by position against a bigram
baseline, and text metrics of its continuations of held-out stories beside the true ones.

Plain Python and PyTorch (no Dagster, no MLflow): ``metrics`` (text metrics), ``likelihood``
(bits per character and its curve, the bigram), ``continuations`` (held-out stories and their
continuations), ``evaluate`` (all of it, and the collapse gate), ``report`` (tables and the
plot), ``config`` (the settings). See docs/evaluation.md.
"""
