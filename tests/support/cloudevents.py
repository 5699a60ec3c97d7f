from __future__ import annotations


def binary_headers(ce_type: str, event_id: str, source: str, **extensions: str) -> dict[str, str]:
    """The HTTP headers of a binary-mode CloudEvent with a JSON body; ``extensions`` such as
    ``subject="e1"`` become ``ce-subject: e1``."""
    return {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": source,
        "ce-type": ce_type,
        **{f"ce-{name}": value for name, value in extensions.items()},
    }
