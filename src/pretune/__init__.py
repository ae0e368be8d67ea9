"""pretune: tune pretrained language models to small labelled tasks.

    from pretune import RunConfig, train_run, load_run, Predictor, export_run

The API's names load on first use, so `import pretune` (and `pretune --help`) stays light.
"""

__version__ = "0.1.0"

__all__ = ["Predictor", "RunConfig", "__version__", "evaluate_untrained", "export_run", "load_run", "resume_run",
           "train_run"]


def __getattr__(name: str):
    if name == "export_run":
        from .export.formats import export_run

        return export_run
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pretune' has no attribute '{name}'")
