"""lanewise: give every AI task a lane (live or batch), run as Prefect flows."""

__version__ = "0.1.0"
