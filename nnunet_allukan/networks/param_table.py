"""``nnUNetv2_allukan_params``: parameter count of every Table 2 row next to the paper's.

Builds each network on the CPU (no forward pass) and prints a Markdown table; ``--json`` writes it too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .variants import TABLE2_ROWS, build_table2_network, network_summary


def parameter_table(input_channels: int = 3, num_classes: int = 1) -> list[dict]:
    rows = []
    for r in TABLE2_ROWS.values():
        s = network_summary(build_table2_network(r.row, input_channels, num_classes))
        rows.append({"row": r.row, "name": r.name, "description": r.description, "parameters": s["parameters"],
                     "paper_millions": r.paper_params,
                     "ratio_to_paper": s["parameters"] / (r.paper_params * 1e6),
                     "layers": {k: s[k] for k in ("KAConv", "KALinear", "KANConv", "KANLinear", "Conv", "Linear")}})
    return rows


def format_markdown(rows: list[dict]) -> str:
    lines = ["| row | variant | parameters | paper | ours / paper | layers |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        layers = ", ".join(f"{v} {k}" for k, v in r["layers"].items() if v)
        lines.append(f"| {r['row']} | {r['name']}: {r['description']} | {r['parameters']:,} | "
                     f"{r['paper_millions']:.2f}M | {r['ratio_to_paper']:.3f} | {layers} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nnUNetv2_allukan_params", description=__doc__.splitlines()[0])
    p.add_argument("-c", "--input-channels", type=int, default=3, help="input channels (default 3, RGB)")
    p.add_argument("-n", "--num-classes", type=int, default=1, help="output channels (default 1, binary)")
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON to this file")
    a = p.parse_args(argv)
    if a.input_channels < 1 or a.num_classes < 1:
        p.error("--input-channels and --num-classes must be >= 1")
    rows = parameter_table(a.input_channels, a.num_classes)
    print(format_markdown(rows))
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(rows, indent=2))
        print(f"written to {a.json.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
