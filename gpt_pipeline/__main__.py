"""``python -m gpt_pipeline``: the same as the ``gpt-pipeline`` command."""

import sys

from gpt_pipeline.cli import main

sys.exit(main())
