"""The schedule rule: stop at a depth of forgetting or at a utility bound, read on the validation split."""

import pytest

from unlearn_audit.training.schedule import ScheduleRule

START = {"val_verbmem_f": 80.0, "val_knowmem_f": 60.0, "val_knowmem_r": 50.0}


def epoch(n, verbmem, knowmem, retain):
    return {"epoch": n, "metrics": {"val_verbmem_f": verbmem, "val_knowmem_f": knowmem, "val_knowmem_r": retain}}


def test_depth_stops_at_the_first_epoch_whose_mean_retained_reaches_it():
    rule = ScheduleRule(depth=0.5, min_utility_kept=0.8)
    epochs = [epoch(1, 80.0, 60.0, 50.0), epoch(2, 48.0, 30.0, 45.0)]  # retained (0.75 + 0.5) / 2 = 0.625
    assert rule.decide(START, epochs[:1]) is None and rule.decide(START, epochs) is None
    epochs.append(epoch(3, 40.0, 30.0, 45.0))  # (0.5 + 0.5) / 2 = 0.5: reached
    keep, reason = rule.decide(START, epochs)
    assert keep == 3 and "validation retained 50% reached the depth 50% at epoch 3" in reason


def test_utility_bound_keeps_the_last_epoch_above_it_and_wins_a_tie():
    rule = ScheduleRule(depth=0.5, min_utility_kept=0.8)
    epochs = [epoch(1, 70.0, 50.0, 45.0), epoch(2, 60.0, 40.0, 41.0), epoch(3, 20.0, 10.0, 39.0)]
    keep, reason = rule.decide(START, epochs)  # epoch 3: depth reached and utility 78% < 80%
    assert keep == 2 and "utility kept 78% fell below 80% at epoch 3; kept epoch 2" in reason
    keep, _ = rule.decide(START, [epoch(1, 20.0, 10.0, 30.0)])
    assert keep == 1  # no epoch above the bound: the first is kept


def test_a_rule_without_bounds_is_false_and_an_unmet_rule_says_so():
    assert not ScheduleRule() and ScheduleRule(depth=0.4) and ScheduleRule(min_utility_kept=0.8)
    rule = ScheduleRule(depth=0.2)
    epochs = [epoch(1, 80.0, 60.0, 50.0)]
    assert rule.decide(START, epochs) is None
    assert rule.unmet(START, epochs).startswith("the budget ended before the schedule rule stopped "
                                                "(validation retained 100%, utility kept 100%)")


@pytest.mark.parametrize("start", [{"val_verbmem_f": 0.5, "val_knowmem_f": 0.0, "val_knowmem_r": 0.0}])
def test_a_target_that_knows_nothing_gives_no_share_and_never_stops(start):
    """Below one point of knowledge a share is noise (scoring.MIN_POINTS): the rule does not act on it."""
    assert ScheduleRule(depth=0.5, min_utility_kept=0.8).decide(start, [epoch(1, 0.0, 0.0, 0.0)]) is None
