"""A deterministic generator of realistic support tickets (the sample data).

Same arguments, same rows. A few rows are bad on purpose (empty or missing body, a
duplicate ticket id, a body far over a model's context, a missing id) so every run
shows how lanewise reports bad input; `clean=True` leaves them out.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TOPICS = {
    "billing": (
        ["Charged twice this month", "Refund for my last invoice", "Wrong price on invoice",
         "Card declined on renewal"],
        ["I was charged twice for my subscription in {month}.",
         "My invoice shows {n} seats but we only have {m}.",
         "The renewal payment failed although my card is valid.",
         "Please refund the extra charge on my account."]),
    "login": (
        ["Cannot log in", "2FA code never arrives", "Password reset broken", "Locked out"],
        ["I cannot log in since this morning; the password reset link never arrives.",
         "The 2FA code is not delivered to my phone, so I am locked out.",
         "SSO login loops back to the sign in page."]),
    "export": (
        ["CSV export empty", "Export stuck", "Download of report fails"],
        ["The CSV export of my {n} projects produces an empty file.",
         "Exporting the monthly report to xlsx never finishes.",
         "The download button for exports does nothing."]),
    "bug": (
        ["Error when saving", "App crashes", "Blank page on dashboard"],
        ["I get an error 500 every time I save a draft.",
         "The mobile app crashes when I open the inbox.",
         "The dashboard shows a blank page after the update."]),
    "feature_request": (
        ["Feature idea: dark mode", "Please add Slack integration", "Suggestion for tags"],
        ["Would be nice to have dark mode for late shifts.",
         "Could you add an integration with Slack for new tickets?",
         "Suggestion: let us merge tags that mean the same thing."]),
    "account": (
        ["Change account email", "Remove a team member", "Delete my account"],
        ["How do I change the email address on my account?",
         "Please remove a former team member from our seat list.",
         "I would like to close my account at the end of the month."]),
}
MOODS = {
    "negative": ["This is unacceptable and I am frustrated.", "Really disappointed, again.",
                 "Third time I write about this!"],
    "neutral": ["Thanks in advance.", "Let me know what you need from me.", ""],
    "positive": ["Love the product otherwise, thanks!", "Great support last time, thank you."],
}
URGENCY = {"high": ["It is urgent, our team is blocked right now.",
                    "Please fix this immediately."],
           "medium": ["", "We need this this week."],
           "low": ["No rush, whenever you can.", "Just curious."]}
MONTHS = ["August", "September", "October", "November"]
CHANNELS = ["email", "chat", "web", "phone"]


def ticket(rng: random.Random, index: int, start: datetime) -> dict:
    """One plausible ticket."""
    topic = rng.choice(list(TOPICS))
    subjects, bodies = TOPICS[topic]
    body = rng.choice(bodies).format(month=rng.choice(MONTHS), n=rng.randint(2, 40),
                                     m=rng.randint(1, 9))
    extra = " ".join(x for x in (rng.choice(MOODS[rng.choice(list(MOODS))]),
                                 rng.choice(URGENCY[rng.choice(list(URGENCY))])) if x)
    created = start + timedelta(minutes=index * 7 + rng.randint(0, 6))
    return {
        "ticket_id": f"T-{index:07d}",
        "created_at": created,
        "customer_id": f"C-{rng.randint(1, max(index // 3, 50)):06d}",
        "channel": rng.choice(CHANNELS),
        "subject": rng.choice(subjects),
        "body": f"{body} {extra}".strip(),
    }


def bad_rows(index: int, start: datetime) -> list[dict]:
    """Rows that lanewise must report, not drop: each reason once."""
    base = {"created_at": start, "customer_id": "C-000001", "channel": "email",
            "subject": "Bad row"}
    return [
        {**base, "ticket_id": f"T-{index:07d}", "body": ""},
        {**base, "ticket_id": f"T-{index + 1:07d}", "body": None},
        {**base, "ticket_id": "T-0000001", "body": "A duplicate of the first ticket's id."},
        {**base, "ticket_id": f"T-{index + 2:07d}",
         "body": "My export fails. " + "Here is the full log line again. " * 600},
        {**base, "ticket_id": None, "body": "A ticket without an id."},
    ]


def write(rows: int, out: Path, seed: int, clean: bool, chunk: int = 100_000) -> int:
    """Write `rows` tickets to `out` in chunks; returns the rows written."""
    rng = random.Random(seed)
    start = datetime(2026, 8, 1, tzinfo=UTC)
    schema = pa.schema([("ticket_id", pa.string()), ("created_at", pa.timestamp("s", "UTC")),
                        ("customer_id", pa.string()), ("channel", pa.string()),
                        ("subject", pa.string()), ("body", pa.string())])
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    extras = [] if clean else bad_rows(rows + 1, start)
    good = rows - len(extras)
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for first in range(1, good + 1, chunk):
            batch = [ticket(rng, i, start) for i in range(first, min(first + chunk, good + 1))]
            if first + chunk > good:
                batch.extend(extras)
            writer.write_table(pa.Table.from_pylist(batch, schema))
            written += len(batch)
    return written
