r"""WS-DINO's "combined" profile: the per-channel feature tables of the same images side by side.

The inputs must describe the same images in the same order with the same metadata (they come
from one image cache); the `feat_` columns are concatenated in the order of `--inputs` and
renumbered feat_0000 ... Other columns are kept once.

    python -m workflow_scripts.evaluate.combine --inputs DAPI.parquet Tubulin.parquet \
        Actin.parquet --names DAPI Tubulin Actin --out combined.parquet
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError, cli
from workflow_scripts.tables import feature_columns, feature_names, read_table, write_table


def combine_features(tables: list[pd.DataFrame], names: list[str]) -> pd.DataFrame:
    """Concatenate the feature columns of `tables` (named `names` in errors)."""
    first = tables[0]
    metadata = [c for c in first.columns if c not in feature_columns(first)]
    for table, name in zip(tables[1:], names[1:]):
        other = [c for c in table.columns if c not in feature_columns(table)]
        if other != metadata:
            raise InputError(
                f"features of {name}: metadata columns {other} differ from those of "
                f"{names[0]} {metadata}"
            )
        if len(table) != len(first):
            raise InputError(
                f"features of {name}: {len(table)} rows, but {names[0]} has {len(first)}"
            )
        left, right = table[metadata].reset_index(drop=True), first[metadata].reset_index(drop=True)
        unequal = np.argwhere(~(left.eq(right) | (left.isna() & right.isna())).to_numpy())
        if len(unequal):
            row, col = unequal[0]
            column = metadata[col]
            raise InputError(
                f"features of {name}: row {row}, column '{column}' is {left.at[row, column]!r}, "
                f"but {right.at[row, column]!r} in {names[0]} (images must match row by row)"
            )
    values = pd.concat([t[feature_columns(t)].reset_index(drop=True) for t in tables], axis=1)
    values.columns = feature_names(values.shape[1])
    return pd.concat([first[metadata].reset_index(drop=True), values], axis=1)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="per-channel feature tables")
    parser.add_argument("--names", nargs="+", required=True, help="channel name of each input")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if len(args.names) != len(args.inputs):
        raise InputError(f"--names: {len(args.names)} names for {len(args.inputs)} --inputs")
    tables = [read_table(path) for path in args.inputs]
    for table, path in zip(tables, args.inputs):
        if not feature_columns(table):
            raise InputError(f"{path}: no feat_ columns")
    labels = [f"{name} ({path})" for name, path in zip(args.names, args.inputs)]
    combined = combine_features(tables, labels)
    write_table(combined, args.out)
    widths = ", ".join(f"{name} {len(feature_columns(t))}" for name, t in zip(args.names, tables))
    print(f"combined {len(combined)} images: {widths} features", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
