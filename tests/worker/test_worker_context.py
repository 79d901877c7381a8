import pytest

from distcb import Config, worker_context


def test_outside_a_job_it_is_rank_0_of_1(monkeypatch):
    for name in ("DISTCB_RANK", "DISTCB_WORLD_SIZE", "JOB_COMPLETION_INDEX", "DISTCB_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    context = worker_context()
    assert (context.rank, context.world_size, context.is_chief) == (0, 1, True)


def test_rank_falls_back_to_the_kubernetes_completion_index(monkeypatch):
    monkeypatch.delenv("DISTCB_RANK", raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "3")
    monkeypatch.setenv("DISTCB_WORLD_SIZE", "4")
    monkeypatch.setenv("DISTCB_CONFIG", '{"window_steps": 7}')
    context = worker_context()
    assert (context.rank, context.is_chief) == (3, False)
    assert context.config == Config(window_steps=7)


def test_bad_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DISTCB_RANK", "two")
    with pytest.raises(ValueError, match="DISTCB_RANK must be an integer, found 'two'"):
        worker_context()
    monkeypatch.setenv("DISTCB_RANK", "5")
    monkeypatch.setenv("DISTCB_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="outside DISTCB_WORLD_SIZE=2"):
        worker_context()


def test_config_checks_its_fields():
    with pytest.raises(ValueError, match="window_steps must be > 0"):
        Config(window_steps=0)
    with pytest.raises(TypeError, match="join_timeout_s must be a number"):
        Config(join_timeout_s="soon")
    with pytest.raises(ValueError, match="heartbeat_timeout_s must exceed"):
        Config(heartbeat_interval_s=5.0, heartbeat_timeout_s=1.0)
