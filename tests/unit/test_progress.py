"""A job's progress from its recipe snapshot's step weights."""

from __future__ import annotations

from app.jobs.states import progress_for


def test_progress_follows_the_weights_and_a_plain_snapshot_weighs_each_step_one():
    planning = [{"weight": w} for w in (30, 30, 20, 20)]
    assert [progress_for(planning, done) for done in range(5)] == [0, 30, 60, 80, 100]
    # A snapshot taken before steps had weights.
    assert [progress_for([{}, {}, {}], done) for done in range(4)] == [0, 33, 66, 100]
    # A free last step still ends at 100 only when it is done.
    assert [progress_for([{"weight": 1}, {"weight": 0}], d) for d in range(3)] == [0, 100, 100]
