"""``python -m export``: a checkpoint folder to a parity-checked ONNX file (see export.exporter)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from contract.dataset import DataError
from export.onnx_io import ExportError
from model.checkpoint import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a checkpoint to ONNX, verify it against PyTorch, write it.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument(
        "--graph",
        choices=["serving", "direct"],
        default="serving",
        help="serving: grouped by user, folded (default); direct: the training forward",
    )
    parser.add_argument("--fp16", action="store_true", help="compute in float16 (I/O stay fp32)")
    parser.add_argument(
        "--verify-data", type=Path, help="dataset folder whose rows parity is checked on"
    )
    parser.add_argument("--verify-rows", type=int, default=4096, help="rows checked (default 4096)")
    args = parser.parse_args(argv)
    if args.verify_rows < 1:
        parser.error("--verify-rows must be at least 1")
    # Imported here so that --help answers without loading torch.
    from export.exporter import export_checkpoint

    try:
        summary = export_checkpoint(
            args.checkpoint, args.out, args.graph, args.fp16, args.verify_data, args.verify_rows
        )
    except ExportError as error:
        print(f"error: {error}; nothing written to {args.out}", file=sys.stderr)
        return 1
    except (CheckpointError, DataError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
