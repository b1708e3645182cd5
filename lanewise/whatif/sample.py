"""The sample: N recent requests of a task run through its current route and through
the proposed one, then compared.

Which requests: the task's most recent ones that carry their input. A live call
carries its row (`live_calls.request_row`); a batch item's row is read back from its
run's input file (`runs.input_url`, `items.row_number`), and one whose file or row is
gone is skipped and counted. Each request key (the task's input key) and each request
content is taken once, newest first, so a request answered twice (two lanes, a
rerun) is one sample request.

How they run, and where: `arms.py`. The two arms run the very same rows, one arm
after the other.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lanewise.catalog import TaskSpec
from lanewise.errors import InputError
from lanewise.inputs import read_rows
from lanewise.ledger import Ledger
from lanewise.settings import Settings
from lanewise.whatif.agreement import Agreement, compare
from lanewise.whatif.arms import ArmResult, endpoint, run_arm
from lanewise.whatif.proposal import BATCH_WINDOW_HOURS, Proposal
from lanewise.whatif.traffic import Candidate, candidates


@dataclass
class Selection:
    """The sample's requests (key, row), newest first, and what was passed over."""

    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sources: Counter[str] = field(default_factory=Counter)  # live / batch
    gone: int = 0  # batch requests whose input file or row is gone
    gone_inputs: list[str] = field(default_factory=list)
    repeated: int = 0  # a newer request of the same key or content was taken
    without_key: int = 0  # rows lacking the task's input key

    def keys(self) -> list[str]:
        """The sample's request keys, in order."""
        return [key for key, _ in self.rows]


def _read_back(url: str, numbers: set[int]) -> dict[int, dict[str, Any]] | None:
    """Rows `numbers` of an input file (those that read cleanly); None when the file
    is gone or unreadable."""
    found: dict[int, dict[str, Any]] = {}
    try:
        for row in read_rows(url):
            if row.number in numbers and row.problem is None:
                found[row.number] = row.values
                if len(found) == len(numbers):
                    break
    except InputError:
        return None
    return found


def select(ledger: Ledger, task: TaskSpec, size: int) -> Selection:
    """Up to `size` recent requests of `task` that can be sent again."""
    found = candidates(ledger, task.name, limit=size * 4 + 50)
    wanted: dict[str, set[int]] = {}
    for c in found:
        if c.input_url is not None and c.row_number is not None:
            wanted.setdefault(c.input_url, set()).add(c.row_number)
    loaded: dict[str, dict[int, dict[str, Any]] | None] = {}
    selection = Selection()
    keys: set[str] = set()
    hashes: set[str] = set()
    for c in found:
        if len(selection.rows) >= size:
            break
        row = _row_of(c, wanted, loaded)
        if row is None:
            selection.gone += 1
            if c.input_url not in selection.gone_inputs:
                selection.gone_inputs.append(str(c.input_url))
            continue
        key = row.get(task.input.key)
        if key is None or str(key).strip() == "":
            selection.without_key += 1
            continue
        if str(key) in keys or (c.content_hash is not None and c.content_hash in hashes):
            selection.repeated += 1
            continue
        keys.add(str(key))
        if c.content_hash is not None:
            hashes.add(c.content_hash)
        selection.rows.append((str(key), row))
        selection.sources["live" if c.row is not None else "batch"] += 1
    return selection


def _row_of(c: Candidate, wanted: dict[str, set[int]],
            loaded: dict[str, dict[int, dict[str, Any]] | None]) -> dict[str, Any] | None:
    if c.row is not None:
        return c.row
    assert c.input_url is not None and c.row_number is not None
    if c.input_url not in loaded:
        loaded[c.input_url] = _read_back(c.input_url, wanted[c.input_url])
    rows = loaded[c.input_url]
    return None if rows is None else rows.get(c.row_number)


@dataclass
class SampleReport:
    """What the sample did: its requests, each arm, and their agreement."""

    requested: int
    selection: Selection
    sent_to: str  # the emulator's URL, or "providers"
    current: ArmResult | None = None
    proposed: ArmResult | None = None
    agreement: Agreement | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_picodollars(self) -> int:
        """What both arms cost."""
        return sum(arm.cost_picodollars for arm in (self.current, self.proposed) if arm)


def run_sample(ledger: Ledger, proposal: Proposal, settings: Settings, size: int, *,
               emulator_url: str | None = None, real: bool = False) -> SampleReport:
    """Select up to `size` requests and run them through both routes (see `arms.py`)."""
    task = proposal.task
    selection = select(ledger, task, size)
    with tempfile.TemporaryDirectory(prefix="lanewise-whatif-") as folder:
        scratch = Path(folder)
        with endpoint(settings, scratch, emulator_url, real) as url:
            report = SampleReport(size, selection, url or "providers")
            if not selection.rows:
                report.notes.append(f"no recorded request of {task.name} can be sent again "
                                    "(no live call with its input row, no batch input "
                                    "still readable): nothing was run")
                return report
            report.current = run_arm("current", task, proposal.current, settings, scratch,
                                     url, selection.rows)
            report.proposed = run_arm("proposed", task, proposal.proposed, settings,
                                      scratch, url, selection.rows)
    report.agreement = compare(task, selection.keys(), report.current.answers,
                               report.proposed.answers)
    report.notes.extend(_notes(report, own_emulator=url is not None and not (
        emulator_url or settings.emulator_url)))
    return report


def _notes(report: SampleReport, *, own_emulator: bool) -> list[str]:
    notes: list[str] = []
    selection = report.selection
    if len(selection.rows) < report.requested:
        notes.append(f"{len(selection.rows)} of the {report.requested} requests asked for "
                     "could be sent again")
    if selection.gone:
        notes.append(f"{selection.gone} batch request(s) skipped: their input is gone "
                     f"({', '.join(selection.gone_inputs[:3])}"
                     f"{' ...' if len(selection.gone_inputs) > 3 else ''})")
    if report.sent_to == "providers":
        return notes
    notes.append("on the emulator the answer depends on the request alone, not the "
                 "model: agreement checks lanewise's plumbing, not the models "
                 "(--real-providers sends the sample to the providers)")
    if any(arm and arm.route.lane == "batch" for arm in (report.current, report.proposed)):
        notes.append("the emulator's batches end in seconds; a real batch may take up to "
                     f"{BATCH_WINDOW_HOURS} h")
    if not own_emulator:
        notes.append(f"the sample is in the billing record of the emulator at "
                     f"{report.sent_to}; if the production lanes use it too, `lanewise "
                     "reconcile` counts it as spend the ledger does not hold")
    return notes
