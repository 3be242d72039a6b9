"""Set-up shared by the BFN benchmark scripts: config overrides and markdown tables over n steps."""

import ast
from collections.abc import Sequence

from ml_collections import ConfigDict

from configs import bfn as bfn_configs


def apply_overrides(config: ConfigDict, overrides: Sequence[str]) -> ConfigDict:
    """Set each a.b=value override in place (parsed to the field's type unless it is a string)."""
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = (
            value if isinstance(node[leaf], str) else type(node[leaf])(ast.literal_eval(value))
        )
    return config


def parse_config(variant: str, overrides: Sequence[str]) -> ConfigDict:
    """The BFN variant's config with --set a.b=value overrides applied."""
    return apply_overrides(bfn_configs.get_config(variant), overrides)


def steps_table(
    first_column: str, n_steps: Sequence[int], rows: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """Markdown lines of a table with a column per number of steps and a row per (label, cells)."""
    lines = [
        f"| {first_column} | " + " | ".join(f"n = {n}" for n in n_steps) + " |",
        "|---|" + "---|" * len(n_steps),
    ]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return lines
