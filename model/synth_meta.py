"""Whether a folder is model.synth's output, told from its meta.json: standard library only, so
that deploy/demo.sh can ask before anything is installed.

model.synth writes meta.json last, holding exactly its arguments: SynthConfig's fields, all
integers (tests/test_synth.py pins both the file and the field list). A folder whose meta.json is
that is the generator's own, and may be reused or rewritten; any other folder with files in it is
someone's data, and model.synth does not write into it unless told to (``--overwrite``).

    python3 -m model.synth_meta DIR

prints ``generated`` (model.synth wrote DIR) or ``empty`` (DIR is missing or empty) and exits 0,
or names DIR and why it is neither on stderr and exits 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: SynthConfig's fields, in order: what a meta.json of model.synth holds, and nothing else.
FIELDS = ("items", "users", "train_rows", "valid_rows", "test_rows", "seed", "history_max")


def written_by_synth(folder: Path) -> bool:
    """``folder/meta.json`` is one model.synth writes."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and set(meta) == set(FIELDS)
        and all(type(value) is int for value in meta.values())
    )


def refusal(folder: Path) -> str | None:
    """Why model.synth must not write into ``folder`` (None: it may)."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{folder} exists and is not a folder"
    if not any(folder.iterdir()) or written_by_synth(folder):
        return None
    why = "its meta.json is not" if (folder / "meta.json").exists() else "it has no meta.json of"
    return f"{folder} holds files and {why} model.synth: not writing into data it did not write"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m model.synth_meta DIR", file=sys.stderr)
        return 2
    folder = Path(args[0])
    reason = refusal(folder)
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    print("generated" if folder.is_dir() and written_by_synth(folder) else "empty")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
