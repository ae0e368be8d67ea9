"""matplotlib, an optional extra (`pip install 'pretune[plots]'`): only the reports' PNG figures use it.

Without it a report still writes its JSON and Markdown, the results themselves, and leaves the
figures out with one warning: a benchmark that ran for hours is not lost for want of a plotting library.
"""

from __future__ import annotations

import sys

MISSING = "pretune: plots need matplotlib: pip install 'pretune[plots]'"

_warned = False


def pyplot():
    """matplotlib's pyplot on its file-only backend, or None (and one warning per process) without matplotlib."""
    global _warned
    try:
        import matplotlib
    except ImportError:
        if not _warned:
            print(f"{MISSING} (the results are written without their PNG figures)", file=sys.stderr)
            _warned = True
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
