"""The move a what-if weighs: a task's current lane and model, the proposed ones, and
what the catalog says against the proposal.

The provider of a proposed model is the price table's (`litellm_provider` of its
entry): a model lanewise cannot price cannot be estimated, and every priced model
names its provider there, so there is nothing to infer from the name and no
`--provider` to get wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lanewise.catalog import LanePolicy, TaskSpec
from lanewise.errors import ConfigurationError
from lanewise.pricing import PriceTable

LANES = ("live", "batch")
#: How long a provider may take to end a batch (both providers' completion window).
BATCH_WINDOW_HOURS = 24


@dataclass(frozen=True)
class Route:
    """Where a task's requests go: a lane, a provider and a model."""

    lane: str
    provider: str
    model: str

    def label(self) -> str:
        """`batch / openai / gpt-4o-mini`."""
        return f"{self.lane} / {self.provider} / {self.model}"

    def as_dict(self) -> dict[str, str]:
        """The route as JSON."""
        return {"lane": self.lane, "provider": self.provider, "model": self.model}


@dataclass(frozen=True)
class Proposal:
    """A task, where it runs now and where it would run."""

    task: TaskSpec
    current: Route
    proposed: Route
    #: Where the proposed lane goes against what the catalog says of the task.
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def other_provider(self) -> bool:
        """Whether the proposed model is another provider's (its tokenizer differs)."""
        return self.proposed.provider != self.current.provider


def current_lane(task: TaskSpec) -> str:
    """The lane the catalog runs the task in (`auto`: live when a person waits)."""
    if task.lane is LanePolicy.AUTO:
        return "live" if task.person_waits else "batch"
    return task.lane.value


def model_provider(prices: PriceTable, model: str) -> str:
    """The provider of `model` by the price table; an unknown model is an error that
    names the models the table knows."""
    try:
        return prices.price(model).provider
    except ConfigurationError as exc:
        raise ConfigurationError(f"--model: {exc}") from None


def catalog_conflicts(task: TaskSpec, lane: str) -> list[str]:
    """What the catalog says against running the task in `lane`."""
    found: list[str] = []
    if lane == "batch":
        if task.person_waits:
            found.append("a person waits for this task (catalog: person_waits true), and a "
                         f"batch answers within {BATCH_WINDOW_HOURS} h, not while they wait")
        elif task.max_delay_hours < BATCH_WINDOW_HOURS:
            found.append(f"the catalog tolerates at most {task.max_delay_hours:g} h of delay "
                         f"(max_delay_hours), and a batch may take up to "
                         f"{BATCH_WINDOW_HOURS} h")
    return found


def propose(task: TaskSpec, lane: str, model: str | None, prices: PriceTable) -> Proposal:
    """The proposal for `task`: `lane`, and `model` (default: the task's own)."""
    if lane not in LANES:
        raise ConfigurationError(f"unknown lane {lane!r} (known: {', '.join(LANES)})")
    current = Route(current_lane(task), task.provider, task.model)
    model = model or task.model
    proposed = Route(lane, model_provider(prices, model), model)
    notes: list[str] = []
    if task.lane is LanePolicy.AUTO:
        notes.append(f"the catalog's lane is auto: taken as {current.lane} "
                     f"({'a person waits' if task.person_waits else 'nobody waits'})")
    if proposed == current:
        notes.append("the proposal is where the task runs now: the figures show its "
                     "measured cost and wait")
    if proposed.provider != current.provider:
        notes.append(f"{model} is an {proposed.provider} model and the task runs on "
                     f"{current.provider}: the proposed cost prices the recorded token "
                     "counts, but tokenizers differ, so the real counts will too; cache "
                     "reads and writes are priced as plain input (a new provider's "
                     "prompt cache starts cold)")
    if lane == "live" and not task.person_waits and task.max_delay_hours >= \
            BATCH_WINDOW_HOURS:
        notes.append(f"nobody waits for this task and it tolerates "
                     f"{task.max_delay_hours:g} h: live pays the standard (rush) rate for "
                     "answers nobody is waiting on")
    return Proposal(task=task, current=current, proposed=proposed,
                    conflicts=catalog_conflicts(task, lane), notes=notes)
