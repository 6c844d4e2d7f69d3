"""The session registry: fresh and resumed opens, save points, snapshots, expiry, limits, close."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from splitnn.common.codec import StepId
from splitnn.common.models import build_head
from splitnn.server.errors import Busy, InvalidRequest, UnknownSession, WrongState
from splitnn.server.head import HeadSession, SessionSpec
from splitnn.server.sessions import SessionRegistry

RUN = "r"


def make_spec(run: str = RUN, *, lr: float = 1e-3, max_batch_size: int = 8) -> SessionSpec:
    return SessionSpec(
        run=run,
        cut_shape=(500,),
        dtype="float32",
        max_batch_size=max_batch_size,
        num_classes=10,
        lr=lr,
        seed=1,
    )


def make_registry(model_dir: Path, *, max_sessions: int = 64) -> SessionRegistry:
    return SessionRegistry(model_dir=model_dir, max_batch_size=8, max_sessions=max_sessions)


def make_batch(seed: int, rows: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations float32 [rows, 500] in [-1, 1] and labels int64 [rows], drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    activations = torch.rand((rows, 500), generator=generator) * 2 - 1
    labels = torch.randint(0, 10, (rows,), generator=generator)
    return activations, labels


def apply(session: HeadSession, epoch: int, batch: int) -> None:
    """Applies step (epoch, batch) with a batch drawn from its position."""
    _, applied = session.head.train(
        StepId(session.spec.run, epoch, batch), *make_batch(100 * epoch + batch), save=False
    )
    assert applied


def saved_steps(registry: SessionRegistry, run: str = RUN) -> list[tuple[int, int, bool]]:
    return [(s.epoch, s.batch, s.snapshot) for s in registry.store_of().saves(run)]


def assert_same_head(a: HeadSession, b: HeadSession) -> None:
    """Weights and Adam moments equal, key by key."""
    state_a, state_b = a.head.state(), b.head.state()
    weights_a, weights_b = state_a["head"], state_b["head"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    opt_a, opt_b = state_a["optimizer"], state_b["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for index, moments in opt_a["state"].items():
        assert moments.keys() == opt_b["state"][index].keys()
        for name, value in moments.items():
            assert torch.equal(value, opt_b["state"][index][name]), (index, name)


def test_a_fresh_open_drops_the_runs_old_saves(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    old, _ = registry.open(make_spec(), resume=False)
    apply(old, 1, 1)
    registry.save_point(old)
    assert saved_steps(registry) == [(1, 1, False)]

    session, resumed = make_registry(tmp_path).open(make_spec(), resume=False)

    assert not resumed
    assert session.head.last_step is None
    assert saved_steps(registry) == []


def test_a_fresh_open_keeps_other_runs_saves(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    other, _ = registry.open(make_spec("other"), resume=False)
    apply(other, 1, 1)
    registry.save_point(other)

    registry.open(make_spec(), resume=False)

    assert saved_steps(registry, "other") == [(1, 1, False)]


def test_resume_after_a_restart_restores_the_saved_head(tmp_path: Path) -> None:
    # Prepare: two steps, a save point after the second; a fresh registry plays the restart.
    spec = make_spec()
    before = make_registry(tmp_path)
    original, _ = before.open(spec, resume=False)
    apply(original, 1, 1)
    step = StepId(RUN, 1, 2)
    reply, _ = original.head.train(step, *make_batch(7), save=False)
    before.save_point(original)
    after = make_registry(tmp_path)

    session, resumed = after.open(spec, resume=True, resume_from=[step])

    assert resumed
    assert session.session_id != original.session_id
    assert session.head.last_step == step
    assert session.head.steps_applied == 2
    assert not session.head.restored
    assert_same_head(session, original)
    # A retry of the saved step is answered from the restored cache, unchanged.
    retry, applied = session.head.train(step, *make_batch(7), save=False)
    assert not applied
    assert torch.equal(retry.gradient, reply.gradient)
    assert (retry.loss, retry.correct) == (reply.loss, reply.correct)
    # The next step gives what the uninterrupted session gives.
    apply(original, 1, 3)
    apply(session, 1, 3)
    assert_same_head(session, original)


def test_a_resumed_head_differs_from_a_fresh_one(tmp_path: Path) -> None:
    """Guards the comparisons above: one step of training changes the head and its moments."""
    registry = make_registry(tmp_path)
    trained, _ = registry.open(make_spec(), resume=False)
    apply(trained, 1, 1)
    fresh = HeadSession("x", make_spec())

    with pytest.raises(AssertionError):
        assert_same_head(trained, fresh)


def test_the_first_held_offer_wins(tmp_path: Path) -> None:
    # Prepare: save points at (1,2) and (1,3) remain; (1,1) was pruned.
    spec = make_spec()
    before = make_registry(tmp_path)
    session, _ = before.open(spec, resume=False)
    for batch in (1, 2, 3):
        apply(session, 1, batch)
        before.save_point(session)
    after = make_registry(tmp_path)
    offers = [StepId(RUN, 1, 5), StepId(RUN, 1, 1), StepId(RUN, 1, 2), StepId(RUN, 1, 3)]

    resumed_session, resumed = after.open(spec, resume=True, resume_from=offers)

    assert resumed
    assert resumed_session.head.last_step == StepId(RUN, 1, 2)


def test_resuming_at_an_older_save_discards_the_newer_ones(tmp_path: Path) -> None:
    spec = make_spec()
    before = make_registry(tmp_path)
    session, _ = before.open(spec, resume=False)
    for batch in (1, 2):
        apply(session, 1, batch)
        before.save_point(session)
    apply(session, 1, 3)
    before.snapshot(session)
    assert saved_steps(before) == [(1, 1, False), (1, 2, False), (1, 3, True)]
    after = make_registry(tmp_path)

    after.open(spec, resume=True, resume_from=[StepId(RUN, 1, 1)])

    assert saved_steps(after) == [(1, 1, False)]


def test_the_live_session_is_kept_when_its_last_step_matches(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)
    registry.save_point(live)
    apply(live, 1, 2)  # not saved: only the live session holds it

    session, resumed = registry.open(
        make_spec(), resume=True, resume_from=[StepId(RUN, 1, 9), StepId(RUN, 1, 2)]
    )

    assert resumed
    assert session is live
    assert session.session_id == live.session_id
    assert registry.get(live.session_id) is live
    assert len(registry) == 1
    assert saved_steps(registry) == [(1, 1, False)]


def test_an_earlier_held_save_wins_over_a_later_live_match(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)
    registry.save_point(live)
    apply(live, 1, 2)

    session, resumed = registry.open(
        make_spec(), resume=True, resume_from=[StepId(RUN, 1, 1), StepId(RUN, 1, 2)]
    )

    assert resumed
    assert session.session_id != live.session_id
    assert session.head.last_step == StepId(RUN, 1, 1)
    assert len(registry) == 1
    with pytest.raises(UnknownSession):
        registry.get(live.session_id)


def test_no_offer_held_is_refused_naming_what_the_server_holds(tmp_path: Path) -> None:
    spec = make_spec()
    before = make_registry(tmp_path)
    session, _ = before.open(spec, resume=False)
    for batch in (1, 2):
        apply(session, 1, batch)
        before.save_point(session)
    after = make_registry(tmp_path)

    with pytest.raises(WrongState) as refused:
        after.open(spec, resume=True, resume_from=[StepId(RUN, 2, 1)])

    message = str(refused.value)
    assert str(StepId(RUN, 2, 1)) in message
    assert f"the server holds {StepId(RUN, 1, 1)}, {StepId(RUN, 1, 2)}" in message
    assert len(after) == 0
    assert saved_steps(after) == [(1, 1, False), (1, 2, False)]


def test_no_offer_held_on_an_empty_server_says_it_holds_nothing(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)

    with pytest.raises(WrongState, match="the server holds nothing"):
        registry.open(make_spec(), resume=True, resume_from=[StepId(RUN, 1, 1)])


def test_no_offer_held_with_from_start_opens_a_fresh_head(tmp_path: Path) -> None:
    spec = make_spec()
    before = make_registry(tmp_path)
    old, _ = before.open(spec, resume=False)
    apply(old, 1, 1)
    before.save_point(old)
    after = make_registry(tmp_path)

    session, resumed = after.open(
        spec, resume=True, resume_from=[StepId(RUN, 4, 4)], from_start=True
    )

    assert not resumed
    assert session.head.last_step is None
    assert session.head.steps_applied == 0
    fresh = build_head(spec.seed, spec.num_classes).state_dict()
    for key, value in session.head.state_dict().items():
        assert torch.equal(value, fresh[key]), key
    assert saved_steps(after) == []  # the run starts over


def test_an_offer_of_another_run_is_invalid(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)

    with pytest.raises(InvalidRequest, match="'other'"):
        registry.open(make_spec(), resume=True, resume_from=[StepId("other", 1, 1)])
    assert len(registry) == 0


def test_resume_with_other_settings_than_saved_is_refused(tmp_path: Path) -> None:
    before = make_registry(tmp_path)
    session, _ = before.open(make_spec(), resume=False)
    apply(session, 1, 1)
    before.save_point(session)
    after = make_registry(tmp_path)

    with pytest.raises(WrongState, match="other settings"):
        after.open(make_spec(lr=2e-3), resume=True, resume_from=[StepId(RUN, 1, 1)])
    assert len(after) == 0
    assert saved_steps(after) == [(1, 1, False)]


def test_resume_with_other_settings_than_the_live_session_is_refused(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)

    with pytest.raises(WrongState, match="different settings"):
        registry.open(make_spec(lr=2e-3), resume=True, resume_from=[StepId(RUN, 1, 1)])
    assert registry.get(live.session_id) is live


def test_resume_with_another_batch_bound_is_allowed(tmp_path: Path) -> None:
    before = make_registry(tmp_path)
    session, _ = before.open(make_spec(), resume=False)
    apply(session, 1, 1)
    before.save_point(session)
    after = make_registry(tmp_path)

    resumed_session, resumed = after.open(
        make_spec(max_batch_size=4), resume=True, resume_from=[StepId(RUN, 1, 1)]
    )

    assert resumed
    assert resumed_session.spec.max_batch_size == 4


def test_empty_offers_resume_the_newest_save(tmp_path: Path) -> None:
    before = make_registry(tmp_path)
    session, _ = before.open(make_spec(), resume=False)
    apply(session, 1, 1)
    before.save_point(session)
    apply(session, 1, 2)
    before.snapshot(session)
    after = make_registry(tmp_path)

    resumed_session, resumed = after.open(make_spec(), resume=True)

    assert resumed
    assert resumed_session.head.last_step == StepId(RUN, 1, 2)


def test_the_session_limit_refuses_one_more_run(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, max_sessions=2)
    first, _ = registry.open(make_spec("a"), resume=False)
    registry.open(make_spec("b"), resume=False)
    # Run c has saves: a refused open must leave them.
    holder = make_registry(tmp_path)
    c_session, _ = holder.open(make_spec("c"), resume=False)
    apply(c_session, 1, 1)
    holder.save_point(c_session)

    with pytest.raises(Busy, match="limit of 2"):
        registry.open(make_spec("c"), resume=False)

    assert len(registry) == 2
    assert saved_steps(registry, "c") == [(1, 1, False)]
    # Reopening a live run replaces its session and does not count as one more.
    again, _ = registry.open(make_spec("a"), resume=False)
    apply(again, 1, 1)
    resumed_session, resumed = registry.open(make_spec("a"), resume=True)
    assert resumed
    assert resumed_session is again
    assert again.session_id != first.session_id
    assert len(registry) == 2


def test_a_closed_session_frees_its_place(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, max_sessions=1)
    first, _ = registry.open(make_spec("a"), resume=False)

    registry.close(first.session_id, finished=True)
    session, _ = registry.open(make_spec("b"), resume=False)

    assert len(registry) == 1
    assert registry.get(session.session_id) is session


def test_expire_saves_and_drops_idle_sessions_only(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    idle, _ = registry.open(make_spec("idle"), resume=False)
    busy, _ = registry.open(make_spec("busy"), resume=False)
    apply(idle, 1, 1)
    apply(idle, 1, 2)
    apply(busy, 1, 1)
    idle.last_used -= 60.0

    expired = registry.expire(30.0)

    assert expired == 1
    with pytest.raises(UnknownSession):
        registry.get(idle.session_id)
    assert registry.get(busy.session_id) is busy
    assert saved_steps(registry, "idle") == [(1, 2, True)]
    assert saved_steps(registry, "busy") == []
    # The snapshot resumes the run where it stopped.
    session, resumed = registry.open(
        make_spec("idle"), resume=True, resume_from=[StepId("idle", 1, 2)]
    )
    assert resumed
    assert_same_head(session, idle)


def test_expire_keeps_a_session_touched_recently(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    session.last_used -= 60.0

    registry.get(session.session_id)  # activity: touches the session
    expired = registry.expire(30.0)

    assert expired == 0
    assert registry.get(session.session_id) is session
    assert saved_steps(registry) == []


def test_expire_keeps_a_session_used_while_it_was_being_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the snapshot call stands in for a request arriving during the save.
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    session.last_used -= 60.0
    save = registry.snapshot

    def save_then_touch(target: HeadSession) -> Path | None:
        path = save(target)
        target.touch()
        return path

    monkeypatch.setattr(registry, "snapshot", save_then_touch)

    registry.expire(30.0)

    assert registry.get(session.session_id) is session
    assert saved_steps(registry) == [(1, 1, True)]


def test_expire_of_a_session_without_steps_writes_nothing(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    session.last_used -= 60.0

    registry.expire(30.0)

    assert len(registry) == 0
    assert not (tmp_path / "server" / RUN).exists()


def test_a_step_already_saved_as_a_point_is_not_saved_again(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    point = registry.save_point(session)
    session.last_used -= 60.0

    registry.expire(30.0)

    assert saved_steps(registry) == [(1, 1, False)]
    assert registry.store_of().find(StepId(RUN, 1, 1)) is not None
    assert point.exists()


def test_a_session_with_loaded_weights_is_not_a_resume_state(tmp_path: Path) -> None:
    # Prepare: a save point at (1,1), an unsaved step (1,2), then other weights loaded.
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)
    registry.save_point(live)
    apply(live, 1, 2)
    live.head.load_weights(build_head(5, 10).state_dict())
    assert live.head.restored

    snapshot = registry.snapshot(live)

    assert snapshot is None
    assert saved_steps(registry) == [(1, 1, False)]
    # The live session at (1,2) is not offered: its head is not the state after (1,2).
    with pytest.raises(WrongState, match="the server holds"):
        registry.open(make_spec(), resume=True, resume_from=[StepId(RUN, 1, 2)])
    session, resumed = registry.open(
        make_spec(), resume=True, resume_from=[StepId(RUN, 1, 2), StepId(RUN, 1, 1)]
    )
    assert resumed
    assert session is not live
    assert session.head.last_step == StepId(RUN, 1, 1)
    assert not session.head.restored


def test_empty_offers_skip_a_live_session_with_loaded_weights(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)
    registry.save_point(live)
    apply(live, 1, 2)
    live.head.load_weights(build_head(5, 10).state_dict())

    session, resumed = registry.open(make_spec(), resume=True)

    assert resumed
    assert session is not live
    assert session.head.last_step == StepId(RUN, 1, 1)


def test_expire_and_close_do_not_save_a_head_with_loaded_weights(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    expiring, _ = registry.open(make_spec("a"), resume=False)
    closing, _ = registry.open(make_spec("b"), resume=False)
    for session in (expiring, closing):
        apply(session, 1, 1)
        session.head.load_weights(build_head(5, 10).state_dict())
    expiring.last_used -= 60.0

    registry.expire(30.0)
    registry.close(closing.session_id, finished=False)

    assert len(registry) == 0
    assert saved_steps(registry, "a") == []
    assert saved_steps(registry, "b") == []


def test_a_step_after_loading_weights_makes_the_head_resumable_again(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    session.head.load_weights(build_head(5, 10).state_dict())

    apply(session, 1, 2)
    path = registry.snapshot(session)

    assert not session.head.restored
    assert path is not None
    assert saved_steps(registry) == [(1, 2, True)]


def test_close_finished_removes_the_runs_saves(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    registry.save_point(session)
    apply(session, 1, 2)

    registry.close(session.session_id, finished=True)

    assert saved_steps(registry) == []
    assert len(registry) == 0
    with pytest.raises(UnknownSession):
        registry.get(session.session_id)


def test_close_unfinished_keeps_the_saves_and_writes_a_snapshot(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)
    registry.save_point(session)
    apply(session, 1, 2)

    registry.close(session.session_id, finished=False)

    assert saved_steps(registry) == [(1, 1, False), (1, 2, True)]
    assert len(registry) == 0
    with pytest.raises(UnknownSession):
        registry.get(session.session_id)


def test_save_all_snapshots_every_live_session(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    a, _ = registry.open(make_spec("a"), resume=False)
    b, _ = registry.open(make_spec("b"), resume=False)
    apply(a, 1, 3)
    apply(b, 2, 1)

    registry.save_all()

    assert saved_steps(registry, "a") == [(1, 3, True)]
    assert saved_steps(registry, "b") == [(2, 1, True)]
    assert len(registry) == 2


def test_a_spec_is_recorded_with_the_save(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    session, _ = registry.open(make_spec(), resume=False)
    apply(session, 1, 1)

    path = registry.save_point(session)
    save = registry.store_of().find(StepId(RUN, 1, 1))

    assert save is not None and save.path == path
    state = registry.store_of().load(save)
    assert state["spec"] == {**dataclasses.asdict(make_spec()), "cut_shape": [500]}
    assert state["last_step"] == [1, 1]


def test_reopening_a_live_run_with_resume_saves_it_first_and_says_so(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    live, _ = registry.open(make_spec(), resume=False)
    apply(live, 1, 1)
    registry.save_point(live)
    apply(live, 1, 2)

    again, resumed = registry.open(make_spec(), resume=True, resume_from=[StepId(RUN, 1, 1)])

    assert resumed and again is not live and again.replaced
    assert not live.replaced
    # The live session's newer step was saved before it was replaced (and then, resuming at an
    # older step, that newer save was dropped as abandoned).
    assert saved_steps(registry) == [(1, 1, False)]


def test_owners_do_not_share_runs(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    alice, _ = registry.open(make_spec(), resume=False, owner="alice")
    apply(alice, 1, 1)
    registry.save_point(alice)

    bob, resumed = registry.open(make_spec(), resume=True, owner="bob")

    assert not resumed and bob is not alice and not bob.replaced
    assert registry.get(alice.session_id, owner="alice") is alice
    with pytest.raises(UnknownSession):
        registry.get(alice.session_id, owner="bob")
    assert saved_steps(registry) == []  # the anonymous owner holds nothing
    assert [s.path.parent.parent.name for s in registry.store_of("alice").saves(RUN)] == ["alice"]
