"""Make the deterministic sample of support tickets as Parquet.

    python scripts/make_tickets.py                         # data/tickets.parquet, 2,000 rows
    python scripts/make_tickets.py --rows 1000000 --out /tmp/tickets-1m.parquet

Same arguments, same file (the generator is `lanewise.sampledata`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lanewise.sampledata import write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "data" /
                        "tickets.parquet")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--clean", action="store_true", help="no deliberately bad rows")
    args = parser.parse_args()
    print(f"wrote {write(args.rows, args.out, args.seed, args.clean)} rows to {args.out}")


if __name__ == "__main__":
    main()
