"""pretune: tune pretrained language models to small labelled tasks."""

__version__ = "0.1.0"
