"""The answer every bad input must get: exit code 2, exactly one line on stderr that names what is
wrong, no traceback, and no run folder left claiming `complete`."""

import json
from pathlib import Path


def claims_complete(folder: Path) -> bool:
    try:
        return json.loads((Path(folder) / "run.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def assert_refused(code: int, err: str, expected: str, out: Path | None = None) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    # "pretune: error: ...", or argparse's "pretune train: error: ..."
    assert lines[0].startswith("pretune") and ": error: " in lines[0] and expected in lines[0], lines[0]
    if out is not None:
        assert not claims_complete(out)


def assert_refused_whole(code: int, err: str, expected: str, out: Path | None = None) -> None:
    """`assert_refused`, and the line is pretune's own and holds exactly `expected`."""
    assert_refused(code, err, expected, out)
    assert err.strip() == f"pretune: error: {expected}"


def run_main(argv: list) -> int:
    """`pretune.cli.main` in this process; a usage error (argparse exits) gives its exit code."""
    from pretune.cli import main

    try:
        return main([str(a) for a in argv])
    except SystemExit as exit:
        return exit.code
