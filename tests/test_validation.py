"""The held-out measures of stage 2's guard: ranks against a brute-force reference, mid-ranks for ties, choices."""

import math

import pytest
import torch

from xbt import XBTError
from xbt.method.guard import (
    PathChoice,
    clear_gain_bar,
    geometric_mean_rank,
    i2t_ranks,
    paired_gain,
    pick_and_confirm,
    t2i_ranks,
    target_ranks,
    versus_old_model,
)


def test_ranks_match_a_brute_force_sort():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(30, 8, generator=gen), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=-1)
    targets = torch.randint(50, (30,), generator=gen)
    scores = q @ g.T
    reference = torch.tensor(
        [1 + int((scores[i] > scores[i, targets[i]]).sum()) for i in range(30)], dtype=torch.float64
    )
    assert torch.equal(target_ranks(q, g, targets, chunk=7), reference)  # chunk boundaries too
    assert torch.equal(t2i_ranks(q, q), torch.ones(30, dtype=torch.float64))  # each query is its own best item
    assert torch.equal(i2t_ranks(q[:10], q), torch.ones(10, dtype=torch.float64))


def test_ties_count_half_so_a_collapsed_head_is_not_perfect():
    collapsed = torch.ones(10, 4) / 2.0  # every query and item the same vector
    ranks = t2i_ranks(collapsed, collapsed)
    assert torch.allclose(ranks, torch.full((10,), 5.5, dtype=torch.float64))  # the middle of 10, not 1
    assert geometric_mean_rank(ranks) == pytest.approx(5.5)


def test_a_diverged_query_ranks_last_not_first():
    gallery = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    queries = gallery.clone()
    queries[3] = float("nan")  # NaN compares false with everything: it must not come out on top
    ranks = t2i_ranks(queries, gallery)
    assert ranks[3] == 8 and torch.all(ranks[[0, 1, 2, 4, 5, 6, 7]] == 1)


def test_geometric_mean_rank_weights_and_errors():
    ranks = torch.tensor([1.0, 4.0, 16.0])
    assert geometric_mean_rank(ranks) == pytest.approx(4.0)
    assert geometric_mean_rank(ranks, torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert geometric_mean_rank(ranks, torch.tensor([0.0, 1.0, 1.0])) == pytest.approx(math.sqrt(64))
    with pytest.raises(XBTError, match="no held-out queries"):
        geometric_mean_rank(torch.zeros(0))
    with pytest.raises(XBTError, match="embed both in the old space"):
        target_ranks(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(XBTError, match="put each image's caption at its row"):
        i2t_ranks(torch.zeros(5, 3), torch.zeros(2, 3))


def test_a_path_keeps_stage1_unless_a_later_state_is_strictly_better():
    choice = PathChoice("text", "T2I")
    choice.add("stage 1", 3.0)
    assert not choice.add("stage 2 (epoch 1)", 3.0)  # a tie keeps the earlier state
    assert choice.kept_stage1 and "kept stage 1" in choice.reason()
    assert choice.add("stage 2 (epoch 2)", 2.5) and choice.chosen == "stage 2 (epoch 2)"
    assert not choice.add("stage 2 (epoch 3)", 2.7)
    record = choice.to_dict()
    assert (
        record["chosen"] == "stage 2 (epoch 2)"
        and record["scores"]["stage 1"] == 3.0
        and "2.500 vs stage 1's 3.000" in record["reason"]
    )


def test_paired_gain_is_the_mean_and_standard_error_of_the_per_query_gain():
    gen = torch.Generator().manual_seed(0)
    base, logs = torch.rand(50, generator=gen) * 3, torch.rand(50, generator=gen) * 3
    gain = base - logs
    mean, se = paired_gain(base, logs)
    assert mean == pytest.approx(float(gain.mean())) and se == pytest.approx(float(gain.std() / math.sqrt(50)))
    # integer weights count a query that many times, as if it were repeated
    w = torch.randint(1, 4, (50,), generator=gen)
    rep = torch.repeat_interleave(gain, w)
    wmean, wse = paired_gain(base, logs, w.float())
    assert wmean == pytest.approx(float(rep.mean()))
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    var = float((w * (gain - wmean) ** 2).sum() / w.sum()) * n_eff / (n_eff - 1)
    assert wse == pytest.approx(math.sqrt(var / n_eff))
    # a diverged state (infinite rank) is never a clear gain
    m, s = paired_gain(base, torch.cat([logs[:-1], torch.tensor([math.inf])]))
    assert not (m > s)


def test_the_best_of_several_states_on_noise_passes_the_bar_as_rarely_as_one_state_passes_one_se():
    assert clear_gain_bar(1) == pytest.approx(1.0)
    bars = [clear_gain_bar(k) for k in (1, 2, 6, 12)]
    assert bars == sorted(bars) and bars[2] == pytest.approx(1.936, abs=1e-3)
    with pytest.raises(XBTError, match="at least one candidate"):
        clear_gain_bar(0)
    # 4,000 trials of six independent states that gain nothing: how often does the best pass?
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(4000, 1, 200, generator=gen)
    states = base + 0.5 * torch.randn(4000, 6, 200, generator=gen)
    gain = base - states
    z = gain.mean(-1) / (gain.std(-1) / math.sqrt(200))
    best_passes = lambda bar: float((z.max(1).values > bar).double().mean())  # noqa: E731
    one_state = float((z[:, 0] > 1.0).double().mean())
    assert 0.13 < one_state < 0.19  # one state at one standard error: 16 %
    assert best_passes(1.0) > 0.5  # the best of six at one standard error: most of the time
    assert best_passes(clear_gain_bar(6)) <= one_state + 0.02


def test_a_state_picked_on_one_half_and_confirmed_on_the_other_keeps_noise_rarely_and_a_real_gain_often():
    gen = torch.Generator().manual_seed(1)
    kept = {"noise": 0, "gain": 0}
    for t in range(300):
        base = 1 + 3 * torch.rand(200, generator=gen)  # log ranks of 200 queries' right items
        noise = [base + 0.5 * torch.randn(200, generator=gen) for _ in range(6)]
        better = [noise[0] - 0.12, *noise[1:]]  # one state truly gains 0.12 in log rank (about 3.4 standard errors)
        for name, states in (("noise", noise), ("gain", better)):
            choice = pick_and_confirm(base, states, seed=t)
            kept[name] += choice["chosen"] is not None
            if choice["chosen"] is not None:
                g, se = choice["gain_and_se"][choice["chosen"]]
                assert g > choice["clear_gain_bar"] * se and choice["confirm_gain_and_se"][0] > 0
    assert kept["noise"] / 300 < 0.06  # the bar alone keeps noise about one time in six (the test above)
    assert kept["gain"] / 300 > 0.5
    with pytest.raises(XBTError, match="at least 10 queries"):
        pick_and_confirm(torch.zeros(8), [torch.zeros(8)])


def test_versus_old_model_verdict_follows_the_paired_gain():
    old = torch.arange(1, 41).double()
    better = versus_old_model("text", old / 2, old, "m")
    assert better["verdict"] == "better" and better["mean_log_rank_gain"] == pytest.approx(math.log(2), abs=1e-5)
    assert versus_old_model("text", old * 2, old, "m")["verdict"] == "worse"
    noisy = old * torch.tensor([1.05, 1 / 1.05] * 20).double()
    within = versus_old_model("text", noisy, old, "m")
    assert within["verdict"] == "within noise"
    assert within["summary"].endswith("(within one standard error of the old model's queries).")
    assert better["summary"].endswith("(better than the old model's queries).")
