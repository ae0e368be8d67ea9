"""`python -m pretune` is the `pretune` command (also under `accelerate launch -m pretune` / torchrun)."""

import sys

from .cli import main

sys.exit(main())
