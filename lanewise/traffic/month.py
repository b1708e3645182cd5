"""A month of the support team's AI traffic, as data: what happened when, and why.

Deterministic (same seed and end day, same month). The month is the `days` UTC days
ending on `end` (default: yesterday), so `lanewise audit`'s default window covers it.

What the team's product does, and the four things the routing review should find:

* Tickets arrive all day, fewer at weekends (`Volume`).
* **Live, a person waits:** agents open tickets in working hours (09:00-17:00 UTC, Monday
  to Friday) and ask for a `reply-draft`. Since the team added chat, agents draft far
  more than the catalog's declared 5 a day: **the catalog is out of date**.
* **Batch, nobody waits:** every night at 02:00 UTC `ticket-tagging`, `ticket-summary`
  and `urgent-triage` run over the day's tickets; on Mondays at 03:00 the
  `weekly-digest` groups the last full week's summaries.
* **Misrouted one way:** `faq-candidates` (does this ticket's question belong in the
  help centre? read by the content team once a week) is called live for every ticket
  as it arrives, out of habit: nobody waits, it pays rush prices.
* **Misrouted the other way:** `urgent-triage` is marked as waited on (a supervisor
  must see outage reports and legal threats within 15 minutes) but runs in the nightly
  batch.
* **Duplicated across two lanes:** the escalations team calls `escalation-summary` live
  when a ticket is escalated; its prompt and model are `ticket-summary`'s, so the same
  request is paid again at night (the audit finds it by the request's content hash).
* **A volume spike:** one day in 30 (`Volume.is_spike`) a login outage floods support
  with `Volume.spike_factor` times the usual tickets, and every ticket task's spend
  jumps.

A date's tickets and live calls depend on the seed and the date alone, never on where
the month starts or ends: a month replayed tomorrow overlaps today's replay with the
same traffic, which the replay finds already recorded. The first night of the month
carries the tickets of the day before it (the "prelude" day, whose live calls fall
before the month), so every day of the month has its nightly runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from lanewise.sampledata import CHANNELS, MONTHS, MOODS, TOPICS, URGENCY


@dataclass(frozen=True)
class Volume:
    """How busy the sample team is (tests make a small month with the same shape)."""

    per_weekday: int = 45
    per_weekend_day: int = 20
    #: The outage: one day in every `spike_every_days` (which one, by the date alone),
    #: with `spike_factor` times the usual tickets.
    spike_every_days: int = 30
    spike_factor: int = 5

    def is_spike(self, day: date, seed: int) -> bool:
        """Whether `day` is an outage day: by its date alone, so every month holding the
        day agrees (once in any `spike_every_days` days in a row)."""
        return (day.toordinal() + seed) % self.spike_every_days == 0

#: Share of tickets arriving in working hours that an agent drafts a reply for, and
#: how many drafts an agent asks per such ticket (a chat ticket gets several turns).
DRAFT_SHARE = 0.9
CHAT_DRAFTS = 3
ESCALATION_SHARE = 0.08
WORK_HOURS = (9, 17)
NIGHTLY_TASKS = ("ticket-tagging", "ticket-summary", "urgent-triage")
NIGHTLY_AT = time(2, 0)
DIGEST_AT = time(3, 0)
OUTAGE_TEXTS = (
    "Your status page says all good but none of us can log in since {hour}:00.",
    "Login is broken for our whole team, the password reset link does not work.",
    "Cannot sign in, SSO loops back to the login page. We are blocked right now.",
)


@dataclass(frozen=True)
class LiveEvent:
    """One live call of the month: when, which task, for which ticket."""

    event_id: str
    at: datetime
    task: str
    ticket: dict[str, Any]


@dataclass(frozen=True)
class NightlyRun:
    """One batch run of the month: a task over one day's tickets (or, for the digest,
    over one week's summaries), started at `at`."""

    at: datetime
    task: str
    first_day: date
    last_day: date

    @property
    def run_key(self) -> str:
        """The run key: the sample's own prefix, so it never meets a real night's run."""
        window = self.first_day.isoformat() if self.first_day == self.last_day else \
            f"{self.first_day}..{self.last_day}"
        return f"sample-month:{self.task}:{window}"


@dataclass
class SampleDay:
    """Everything of one simulated day: its tickets, live calls and the runs that start
    on it (the previous day's nightly runs, a digest on Mondays). The prelude day (the
    day before the month) has only tickets: those of the month's first night."""

    day: date
    tickets: list[dict[str, Any]] = field(default_factory=list)
    live: list[LiveEvent] = field(default_factory=list)
    runs: list[NightlyRun] = field(default_factory=list)
    prelude: bool = False


def _at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=UTC)


def _ticket(rng: random.Random, number: int, created: datetime, outage: bool) -> dict[str, Any]:
    """One plausible ticket (the sample data's vocabulary); an outage ticket on the
    spike day."""
    if outage:
        topic, subject = "login", "Cannot log in (outage)"
        body = rng.choice(OUTAGE_TEXTS).format(hour=rng.randint(6, 9))
    else:
        topic = rng.choice(list(TOPICS))
        subjects, bodies = TOPICS[topic]
        subject = rng.choice(subjects)
        body = rng.choice(bodies).format(month=rng.choice(MONTHS), n=rng.randint(2, 40),
                                         m=rng.randint(1, 9))
    extra = " ".join(x for x in (rng.choice(MOODS[rng.choice(list(MOODS))]),
                                 rng.choice(URGENCY[rng.choice(list(URGENCY))])) if x)
    return {"ticket_id": f"M-{created:%Y%m%d}-{number:04d}",
            "created_at": created.isoformat(),
            "customer_id": f"C-{rng.randint(1, 4000):06d}",
            "channel": rng.choice(CHANNELS), "subject": subject,
            # Unique per ticket (its number), as real tickets are: the result cache
            # must not answer one ticket with another's tags.
            "body": f"{body} {extra} (ticket {number} of {created:%b %d})".strip()}


def _day_tickets(rng: random.Random, day: date, volume: Volume,
                 spike: bool) -> list[dict[str, Any]]:
    count = volume.per_weekday if day.weekday() < 5 else volume.per_weekend_day
    count = max(1, round(count * rng.uniform(0.85, 1.15)))
    if spike:
        count *= volume.spike_factor
    seconds = sorted(rng.randrange(24 * 3600) for _ in range(count))
    return [_ticket(rng, number, _at(day, 0) + timedelta(seconds=s),
                    outage=spike and number % 4 != 0)
            for number, s in enumerate(seconds, start=1)]


def _live_events(rng: random.Random, tickets: list[dict[str, Any]]) -> list[LiveEvent]:
    events: list[LiveEvent] = []
    for ticket in tickets:
        created = datetime.fromisoformat(ticket["created_at"])
        tid = ticket["ticket_id"]
        # Every new ticket: the FAQ check, live by habit (nobody reads it before Monday).
        events.append(LiveEvent(f"{tid}:faq", created + timedelta(seconds=2),
                                "faq-candidates", ticket))
        working = created.weekday() < 5 and WORK_HOURS[0] <= created.hour < WORK_HOURS[1]
        if working and rng.random() < DRAFT_SHARE:
            turns = CHAT_DRAFTS if ticket["channel"] == "chat" else 1
            for turn in range(turns):
                at = created + timedelta(minutes=3 + 6 * turn, seconds=rng.randint(0, 59))
                draft_ticket = ticket if turn == 0 else {
                    **ticket, "body": f"{ticket['body']} (customer follow-up {turn})"}
                events.append(LiveEvent(f"{tid}:draft{turn}", at, "reply-draft",
                                        draft_ticket))
        if rng.random() < ESCALATION_SHARE:
            events.append(LiveEvent(f"{tid}:escalation",
                                    created + timedelta(minutes=rng.randint(20, 180)),
                                    "escalation-summary", ticket))
    return sorted(events, key=lambda e: e.at)


def sample_day(day: date, seed: int = 7, volume: Volume | None = None) -> SampleDay:
    """One day's tickets and live calls, from the seed and the date alone."""
    volume = volume or Volume()
    tickets = _day_tickets(random.Random(f"{seed}:tickets:{day}"), day, volume,
                           spike=volume.is_spike(day, seed))
    return SampleDay(day, tickets, _live_events(random.Random(f"{seed}:live:{day}"), tickets))


def month_days(end: date | None = None, days: int = 30, seed: int = 7,
               volume: Volume | None = None) -> list[SampleDay]:
    """The prelude day, then the month, day by day (see the module docstring)."""
    end = end or datetime.now(UTC).date() - timedelta(days=1)
    first = end - timedelta(days=days - 1)
    prelude = sample_day(first - timedelta(days=1), seed, volume)
    prelude.live, prelude.prelude = [], True  # before the month: only its tickets count
    month = [prelude] + [sample_day(first + timedelta(days=n), seed, volume)
                         for n in range(days)]
    # A day's tickets go to the next night's runs; the last day's go to tonight's,
    # after the month.
    for before, night in zip(month, month[1:], strict=False):
        night.runs += [NightlyRun(_at(night.day, NIGHTLY_AT.hour), task, before.day,
                                  before.day) for task in NIGHTLY_TASKS]
    for sample in month[1:]:
        week_start = sample.day - timedelta(days=7)
        if sample.day.weekday() == 0 and week_start >= first:
            sample.runs.append(NightlyRun(_at(sample.day, DIGEST_AT.hour), "weekly-digest",
                                          week_start, week_start + timedelta(days=6)))
    return month


def all_tickets(month: list[SampleDay]) -> Iterator[dict[str, Any]]:
    """Every ticket of the month, in arrival order."""
    for sample in month:
        yield from sample.tickets
