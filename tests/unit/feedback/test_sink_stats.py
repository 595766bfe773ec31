"""The sink's counters stay bounded however long it runs."""

from __future__ import annotations

from tenfold.feedback.sink import StreamStats


def test_distinct_poison_messages_are_counted_without_keeping_every_id() -> None:
    """Every poison message id seen was kept in a set for the life of the process: under a steady stream of refused
    samples (a newer server's field) the sink grew by gigabytes a day until it was killed for memory."""
    st = StreamStats()
    attempts = 5
    for i in range(20_000):
        for attempt in range(1, attempts + 1):  # each delivered max_delivery_attempts times, then dead-lettered
            st.saw_poison(f"m{i}", last=attempt >= attempts)
    assert st.poison == 20_000 * attempts and st.poison_messages == 20_000
    assert len(st._poison_open) == 0  # nothing kept of the messages that reached their last delivery
    st.saw_poison("x", last=False)
    st.saw_poison("x", last=False)
    assert st.poison_messages == 20_001 and len(st._poison_open) == 1
