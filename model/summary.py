"""``python -m model.summary``: the network's layers and its parameter count.

Without a dataset the vocabularies are the real MicroLens-1M ones, so the paper preset
prints the paper's 31,244,293 parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.schema import MICROLENS_1M, FeatureSchema
from model.config import build_config
from model.factory import build_model, count_parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.summary",
        description="Print the network's layers and, on the last line, 'parameters: N'.",
    )
    parser.add_argument("--preset", choices=["small", "paper"], default="paper")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any model setting",
    )
    parser.add_argument(
        "--data", type=Path, help="take vocabulary sizes from this dataset instead of MicroLens-1M"
    )
    args = parser.parse_args(argv)
    try:
        config = build_config(args.preset, args.overrides)
        schema: FeatureSchema = MICROLENS_1M
        if args.data is not None:
            from model.data import Dataset  # pyarrow only when asked for

            schema = Dataset(args.data).schema
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = build_model(config.model, schema)
    print(model)
    for name, parameter in model.named_parameters():
        print(f"{name:55s} {tuple(parameter.shape)!s:>18} {parameter.numel():>12,}")
    print(f"parameters: {count_parameters(model)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
