"""The console of a command: pretune's own progress bars and log lines, the libraries' chatter off."""

from __future__ import annotations

import logging
import os
import sys


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bars instead of through them."""

    def emit(self, record):
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def quiet_libraries() -> None:
    """Our own progress and log lines on the console; the libraries' chatter off."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_TqdmHandler()])
    for name in ("transformers", "accelerate", "peft", "gguf", "httpx", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
