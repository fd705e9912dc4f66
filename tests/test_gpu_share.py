"""``--workers-per-gpu auto``'s rule, on what trials record: no GPU is needed to check a decision.

The figures are an H100's (80 GiB) running BERT-base trials: about 3 GiB at peak,
and launch-bound steps, so a second and third trial add throughput until the
GPU's arithmetic is busy.
"""

from __future__ import annotations

from hpo.gpu_share import Decision, Finished, decide, fitting

GIB = 1024.0
H100 = 80 * GIB


def ran(sharing: int, rate: float, count: int = 2, peak: float = 3 * GIB) -> list[Finished]:
    return [Finished(sharing, rate, peak, H100) for _ in range(count)]


def test_memory_bounds_the_workers_per_gpu_with_headroom_for_each_context():
    assert fitting(3 * GIB, H100) == 8  # 72 GiB usable / 3.5 GiB: 20, capped at 8
    assert fitting(30 * GIB, H100) == 2
    assert fitting(70 * GIB, H100) == 1  # one that barely fits still runs
    assert fitting(90 * GIB, H100) == 1


def test_it_adds_workers_while_throughput_rises_and_settles_on_the_last_one_that_paid():
    assert decide([], 1) == Decision(1, False, "waiting for a first trial to finish")
    trials = ran(1, 100.0, count=1)  # the first trial's peak memory and rate are enough to try a second worker
    assert decide(trials, 1).workers == 2 and not decide(trials, 1).settled
    assert decide(trials + ran(2, 90.0, count=1), 2).workers == 2, "two trials at a shared level before its rate counts"
    trials += ran(2, 90.0)  # 180/s against 100/s
    step = decide(trials, 2)
    assert step.workers == 3 and "1.80x one's throughput" in step.why
    trials += ran(3, 61.0)  # 183/s: under 5% more than two gave
    settled = decide(trials, 3)
    assert settled.workers == 2 and settled.settled
    assert "worker 3 raised throughput only 1.02x" in settled.why and "3.0 GiB of 80 GiB" in settled.why


def test_a_large_trial_stays_alone_however_idle_the_gpu():
    trials = ran(1, 100.0, peak=50 * GIB)
    decision = decide(trials, 1)
    assert decision == Decision(1, True, "1 per GPU: memory holds no more (a trial peaks at 50.0 GiB of 80 GiB)")


def test_the_launcher_credits_each_trial_to_the_worker_count_it_ran_under(tmp_path):
    """AutoShare on a real study: trials as workers record them (name, rate, memory), on a clock of its own."""
    import datetime as dt

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from hpo.autoshare import AutoShare

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'hpo.db'}", study_name="share")
    t0 = dt.datetime(2026, 12, 2, 12, 0, 0)
    clock = [t0]
    share = AutoShare(lambda: study, ["0"], now=lambda: clock[0])

    def finish(worker: str, start: int, end: int, rate: float) -> None:
        trial = create_trial(value=0.5, state=TrialState.COMPLETE, params={"lr": 0.1},
                             distributions={"lr": FloatDistribution(0.01, 1.0)},
                             user_attrs={"worker": worker, "examples_per_second": rate, "peak_memory_mb": 2000.0,
                                         "peak_reserved_mb": 3 * GIB, "device_memory_mb": H100})
        trial.datetime_start, trial.datetime_complete = t0 + dt.timedelta(seconds=start), t0 + dt.timedelta(seconds=end)
        study.add_trial(trial)

    share.started("0", "gpu0-0")
    assert share.look() == ([], [])
    finish("gpu0-0", 1, 5, 100.0)
    assert share.look() == (["0"], [])
    clock[0] = t0 + dt.timedelta(seconds=6)
    share.started("0", "gpu0-1")
    finish("gpu0-0", 5, 9, 100.0)  # began before the second worker: says nothing about two
    assert share.look() == ([], [])
    finish("gpu0-0", 9, 14, 90.0)
    finish("gpu0-1", 7, 13, 90.0)
    assert share.look() == (["0"], [])
    clock[0] = t0 + dt.timedelta(seconds=15)
    share.started("0", "gpu0-2")
    for worker in ("gpu0-0", "gpu0-1", "gpu0-2"):
        finish(worker, 16, 24, 61.0)
    assert share.look() == ([], ["gpu0-2"]), "a third worker that adds under 5% is retired after its trial"
    share.retired("0", "gpu0-2")
    assert share.look() == ([], []), "settled"


def test_auto_without_gpus_or_beside_workers_is_refused_in_one_line(make_study):
    from conftest import hpo

    path = make_study()
    for flags, message in ((["--workers-per-gpu", "auto"], "--workers-per-gpu auto: needs --gpus"),
                           (["--workers-per-gpu", "auto", "--gpus", "all", "--workers", "2"], "drop --workers")):
        result = hpo("launch", str(path), *flags, cwd=path.parent, env={"CUDA_VISIBLE_DEVICES": "0"})
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (path.parent / "hpo.db").exists()
