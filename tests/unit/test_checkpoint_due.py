"""When a stage writes its next checkpoint: after its interval, and never so often that
writing a large state takes more than 2.5% of the stage's time (a fake clock)."""

from __future__ import annotations

from tocsin.streams.stages.checkpoints import MAX_SHARE, checkpoint_due


def test_a_cheap_checkpoint_follows_the_interval() -> None:
    assert not checkpoint_due(100.9, 100.0, 0.01, 1.0)
    assert checkpoint_due(101.0, 100.0, 0.01, 1.0)


def test_a_costly_checkpoint_is_spaced_to_its_share() -> None:
    # 100 ms to write: every 4 s, so checkpoints take 2.5% of the time
    assert MAX_SHARE == 0.025
    assert not checkpoint_due(103.9, 100.0, 0.1, 1.0)
    assert checkpoint_due(104.01, 100.0, 0.1, 1.0)
    # and the share holds whatever the cost
    for cost in (0.06, 0.5, 3.0):
        wait = next(t / 100 for t in range(100_000) if checkpoint_due(t / 100, 0.0, cost, 1.0))
        assert cost / wait <= MAX_SHARE + 1e-9
