"""The project's task catalog without budgets, for the benches.

Why the benches run budget-free: data/catalog.yaml gives ticket-tagging, ticket-summary
and reply-draft a `budget` (a per-run ceiling, a daily and a monthly USD limit) sized for
the sample support team's real volume, a few dozen tickets a day. Enforced, a batch run
whose upper-bound cost estimate passes a budget is refused before it sends anything, and
the live lane defers once a task's daily or monthly budget is spent
(lanewise/budgets.py). The benches measure throughput at 20,000 to 1,000,000 rows and
thousands of live calls against the emulator (nothing real is paid), volumes those
product budgets rightly refuse: run as is, a bench would time a refusal or a deferral
instead of the lane. So each bench points lanewise at a copy of the catalog with every
task's `budget` removed, and otherwise the project's own tasks, prompts and models.

`write_budget_free_catalog` writes that copy; `use_catalog` points this process, and
every child it spawns with an environment inherited from `os.environ`, at it. A child
started with an environment of its own (e.g. one rid of every `LANEWISE_*` variable)
must be given `LANEWISE_CATALOG_PATH` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PROJECT_CATALOG = ROOT / "data" / "catalog.yaml"


def write_budget_free_catalog(folder: Path, *, result_cache: bool = True) -> Path:
    """Write the project's catalog minus every task's `budget` into `folder`; its path.

    `result_cache=False` also turns every task's result cache off (for a bench that must
    send every row, such as vs_sdk against a script that has no cache)."""
    catalog = yaml.safe_load(PROJECT_CATALOG.read_text())
    for spec in catalog["tasks"].values():
        spec.pop("budget", None)
        if not result_cache:
            spec["cache"] = {"enabled": False}
    name = "catalog-no-budgets.yaml" if result_cache else "catalog-no-budgets-no-cache.yaml"
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    check_budget_free(path)
    return path


def check_budget_free(path: Path) -> None:
    """Fail unless the catalog at `path` loads and no task of it has a budget set."""
    from lanewise.catalog import Catalog

    budgeted = sorted(name for name, spec in Catalog.from_file(path).tasks.items()
                      if spec.budget.is_set())
    if budgeted:
        raise SystemExit(f"{path}: tasks still with a budget: {', '.join(budgeted)}")


def use_catalog(path: Path) -> Path:
    """Point this process and the children it spawns at the catalog at `path`; its path.

    Sets LANEWISE_CATALOG_PATH in `os.environ` (read by every `Settings()` made from now
    on, and inherited by children) and clears `get_settings`' cache, which may already
    hold settings read before."""
    from lanewise.settings import get_settings

    resolved = Path(path).resolve()
    os.environ["LANEWISE_CATALOG_PATH"] = str(resolved)
    get_settings.cache_clear()
    return resolved
