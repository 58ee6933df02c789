"""The stores' rules, written once against the interfaces (server/store/base.py, keys.py,
deliveries.py) and run on every implementation: the fixtures ``predictions``, ``keys`` and
``deliveries`` (conftest.py) yield each backend in turn. What one backend does on its own (its
file, its migrations) is tested beside it (test_store_sqlite.py, test_keystore.py)."""

from __future__ import annotations

import time

import pytest

from server.predictions.model import (
    ALL_STATUSES,
    CANCELLED,
    ERROR,
    PROCESSING,
    STARTING,
    SUCCESS,
    WORKER_LOST,
    CancelOutcome,
    InFlightLimitExceeded,
    Lease,
    ListFilter,
    Prediction,
)
from server.store import DeliveryStore, PredictionStore
from server.store.deliveries import DELIVERED, FAILED, PENDING, SIGNING_SECRET_PREFIX
from server.store.hosts import HostReport
from server.store.keys import KeyInfo, hash_key, key_id_from_hash


def pred(
    pid: str, *, owner: str = "key-a", model: str = "flux-dev", created_at: float = 1000.0, **kw
) -> Prediction:
    kw.setdefault("input", {"prompt": pid})
    return Prediction(id=pid, owner=owner, model=model, created_at=created_at, **kw)


def add(store: PredictionStore, *preds: Prediction) -> None:
    for p in preds:
        store.create(p)


def running_one(store: PredictionStore, pid: str = "p1", **claim) -> Prediction:
    add(store, pred(pid))
    claimed = store.claim_next("w0", **claim)
    assert claimed is not None and claimed.id == pid
    return claimed


# -- the queue -------------------------------------------------------------------------------------


def test_claim_next_takes_the_oldest_first_and_ties_in_insertion_order(predictions):
    add(
        predictions,
        pred("late", created_at=30.0),
        pred("tie-1", created_at=10.0),
        pred("tie-2", created_at=10.0),
    )
    add(predictions, pred("early", created_at=5.0))
    order = [predictions.claim_next("w").id for _ in range(4)]
    assert order == ["early", "tie-1", "tie-2", "late"]
    assert predictions.claim_next("w") is None


def _run_one_at_a_time(store: PredictionStore) -> list[str]:
    """One worker: claim, finish, claim... until the queue is empty; the order the jobs ran in."""
    order = []
    while (job := store.claim_next("w0")) is not None:
        order.append(job.id)
        assert store.finish(job.id, SUCCESS, lease=job.lease)
    return order


def test_a_single_image_does_not_wait_behind_another_keys_batch(predictions):
    add(predictions, *(pred(f"a{n}", owner="key-a", created_at=float(n)) for n in range(1, 21)))
    add(predictions, pred("b1", owner="key-b", created_at=100.0))
    order = _run_one_at_a_time(predictions)
    assert order.index("b1") < order.index("a3")
    assert [pid for pid in order if pid.startswith("a")] == [f"a{n}" for n in range(1, 21)]  # FIFO per key


def test_keys_take_turns_on_one_worker(predictions):
    add(predictions, *(pred(f"a{n}", owner="key-a", created_at=float(n)) for n in range(1, 4)))
    add(predictions, *(pred(f"b{n}", owner="key-b", created_at=10.0 + n) for n in range(1, 4)))
    assert _run_one_at_a_time(predictions) == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_the_key_with_fewer_jobs_running_goes_next(predictions):
    add(predictions, *(pred(f"a{n}", owner="key-a", created_at=float(n)) for n in range(1, 21)))
    assert [predictions.claim_next(f"w{n}").id for n in range(2)] == ["a1", "a2"]  # two workers busy
    add(predictions, pred("b1", owner="key-b", created_at=100.0))
    assert predictions.claim_next("w2").id == "b1"


# -- the queue per model: a worker takes only the jobs of the models it serves ----------------------

DEV_FACES = ("flux-dev", "black-forest-labs-flux-dev-lora")


def test_a_worker_for_one_model_never_gets_another_models_job(predictions):
    add(predictions, pred("schnell-1", model="flux-schnell", created_at=1.0))
    assert predictions.claim_next("dev-worker", models=DEV_FACES) is None
    assert predictions.get("schnell-1").status == STARTING


def test_a_job_waits_for_a_worker_of_its_model_while_others_run(predictions):
    add(
        predictions,
        pred("schnell-1", model="flux-schnell", created_at=1.0),
        pred("dev-1", model="flux-dev", created_at=2.0),
        pred("lora-1", model="black-forest-labs-flux-dev-lora", created_at=3.0),
    )
    assert predictions.claim_next("dev-worker", models=DEV_FACES).id == "dev-1"
    assert predictions.claim_next("dev-worker-2", models=DEV_FACES).id == "lora-1"
    assert predictions.claim_next("dev-worker-3", models=DEV_FACES) is None
    assert predictions.claim_next("schnell-worker", models=["flux-schnell"]).id == "schnell-1"


def test_a_worker_serving_no_model_takes_nothing(predictions):
    add(predictions, pred("dev-1"))
    assert predictions.claim_next("w", models=[]) is None
    assert predictions.claim_next("w").id == "dev-1"  # no filter: any model's job


def test_a_keys_oldest_job_for_another_model_does_not_hold_back_its_jobs_for_this_one(predictions):
    add(
        predictions,
        pred("a-schnell", owner="key-a", model="flux-schnell", created_at=1.0),
        pred("a-dev", owner="key-a", model="flux-dev", created_at=2.0),
    )
    assert predictions.claim_next("dev-worker", models=DEV_FACES).id == "a-dev"


def _run_model_one_at_a_time(store: PredictionStore, models: tuple[str, ...]) -> list[str]:
    order = []
    while (job := store.claim_next("w0", models=models)) is not None:
        order.append(job.id)
        assert store.finish(job.id, SUCCESS, lease=job.lease)
    return order


def test_keys_still_take_turns_among_one_models_jobs(predictions):
    add(predictions, *(pred(f"a{n}", owner="key-a", created_at=float(n)) for n in range(1, 4)))
    add(predictions, pred("a-schnell", owner="key-a", model="flux-schnell", created_at=0.5))
    add(predictions, *(pred(f"b{n}", owner="key-b", created_at=10.0 + n) for n in range(1, 4)))
    add(predictions, pred("b-schnell", owner="key-b", model="flux-schnell", created_at=0.1))
    assert _run_model_one_at_a_time(predictions, DEV_FACES) == ["a1", "b1", "a2", "b2", "a3", "b3"]
    # b's older schnell job waited for a schnell worker; then the key whose last start is oldest goes first.
    assert _run_model_one_at_a_time(predictions, ("flux-schnell",)) == ["a-schnell", "b-schnell"]


def test_claim_next_marks_the_row_processing_for_the_worker(predictions):
    add(predictions, pred("p1"))
    claimed = predictions.claim_next("gpu-0")
    assert claimed.status == PROCESSING
    assert claimed.worker_id == "gpu-0"
    assert claimed.attempts == 1
    assert claimed.started_at is not None and claimed.started_at >= claimed.created_at
    assert predictions.get("p1") == claimed


def test_params_are_kept_as_resolved_at_create(predictions):
    resolved = {"prompt": "p1", "num_inference_steps": 28, "guidance": 3.5, "seed": None}
    add(predictions, pred("p1", params=resolved), pred("old-row"))
    assert predictions.get("p1").params == resolved
    assert predictions.get("old-row").params == {}
    assert predictions.claim_next("w").params == resolved


def test_create_sets_created_at_when_missing(predictions):
    p = pred("p1", created_at=0.0)
    predictions.create(p)
    assert p.created_at > 0
    assert predictions.get("p1").created_at == p.created_at


def test_prediction_round_trips_every_field(predictions):
    p = pred(
        "p1",
        input={"prompt": "un chat é", "seed": 4, "guidance": "3.5"},
        webhook_url="https://example.com/hook",
        webhook_secret="s3cret",
        extra={"api": "eachlabs", "events": ["completed"]},
    )
    predictions.create(p)
    assert predictions.get("p1") == p
    assert predictions.get("missing") is None


# -- terminal states are sticky --------------------------------------------------------------------


def test_finish_moves_to_terminal_appending_logs_and_merging_extra(predictions):
    add(predictions, pred("p1", logs="Using seed: 7\n", extra={"api": "eachlabs"}))
    predictions.claim_next("w")
    assert predictions.finish(
        "p1", SUCCESS, output=["out-0.webp"], predict_time=1.5, logs="done\n", extra={"seed": 7}
    )
    row = predictions.get("p1")
    assert row.status == SUCCESS
    assert row.output == ["out-0.webp"]
    assert row.predict_time == 1.5
    assert row.logs == "Using seed: 7\ndone\n"
    assert row.extra == {"api": "eachlabs", "seed": 7}
    assert row.completed_at is not None


def test_finish_twice_keeps_the_first_result(predictions):
    running_one(predictions)
    assert predictions.finish("p1", SUCCESS, output=["out-0.png"])
    first = predictions.get("p1")
    assert not predictions.finish("p1", ERROR, error="late failure", logs="late\n", extra={"x": 1})
    assert predictions.get("p1") == first


def test_finish_refuses_a_non_terminal_status(predictions):
    running_one(predictions)
    with pytest.raises(ValueError):
        predictions.finish("p1", STARTING)
    assert predictions.get("p1").status == PROCESSING


def test_finish_of_a_missing_prediction_returns_false(predictions):
    assert not predictions.finish("nope", SUCCESS)


def test_cancel_after_success_leaves_it_unchanged(predictions):
    running_one(predictions)
    predictions.finish("p1", SUCCESS, output=["out-0.webp"])
    before = predictions.get("p1")
    assert predictions.request_cancel("p1") is CancelOutcome.ALREADY_FINISHED
    assert predictions.get("p1") == before


def test_append_logs_after_terminal_is_a_no_op(predictions):
    running_one(predictions)
    predictions.append_logs("p1", "step 1/28\n")
    predictions.finish("p1", ERROR, error="boom")
    predictions.append_logs("p1", "step 2/28\n")
    assert predictions.get("p1").logs == "step 1/28\n"


def test_requeue_of_a_terminal_prediction_is_refused(predictions):
    running_one(predictions)
    predictions.finish("p1", SUCCESS)
    assert not predictions.requeue("p1", "again")
    assert predictions.get("p1").status == SUCCESS


# -- in-flight limit -------------------------------------------------------------------------------


def test_in_flight_limit_refusal_inserts_nothing(predictions):
    add(predictions, pred("a1"), pred("a2"))
    predictions.claim_next("w")  # one processing, one starting: both count
    with pytest.raises(InFlightLimitExceeded) as refused:
        predictions.create(pred("a3"), max_in_flight=2)
    assert (refused.value.in_flight, refused.value.limit) == (2, 2)
    assert predictions.get("a3") is None
    assert predictions.counts_by_status()[STARTING] == 1


def test_in_flight_limit_counts_only_the_owner_and_only_in_flight(predictions):
    add(predictions, pred("a1"), pred("b1", owner="key-b"), pred("b2", owner="key-b"))
    predictions.request_cancel("a1")  # terminal: no longer in flight
    predictions.create(pred("a2"), max_in_flight=1)
    assert predictions.in_flight("key-a") == 1
    assert predictions.in_flight("key-b") == 2
    assert predictions.in_flight("key-z") == 0


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_of_a_queued_prediction_cancels_it_and_it_never_runs(predictions):
    add(predictions, pred("p1"))
    assert predictions.request_cancel("p1") is CancelOutcome.CANCELLED
    row = predictions.get("p1")
    assert row.status == CANCELLED
    assert row.completed_at is not None
    assert "Cancel" in row.logs
    assert predictions.claim_next("w") is None


def test_cancel_of_a_running_prediction_only_sets_the_flag(predictions):
    running_one(predictions)
    assert predictions.request_cancel("p1") is CancelOutcome.REQUESTED
    row = predictions.get("p1")
    assert (row.status, row.cancel_requested) == (PROCESSING, True)
    assert predictions.finish("p1", CANCELLED)  # the worker ends it


def test_cancel_of_a_finished_prediction_says_already_finished(predictions):
    running_one(predictions)
    predictions.finish("p1", ERROR, error="boom")
    assert predictions.request_cancel("p1") is CancelOutcome.ALREADY_FINISHED
    assert predictions.get("p1").status == ERROR


def test_cancel_of_an_unknown_prediction_says_not_found(predictions):
    assert predictions.request_cancel("nope") is CancelOutcome.NOT_FOUND


# -- requeue ---------------------------------------------------------------------------------------


def test_requeue_puts_it_back_at_the_head_of_the_queue(predictions):
    add(predictions, pred("first", created_at=1.0), pred("second", created_at=2.0))
    predictions.claim_next("w")
    assert predictions.requeue("first", "Requeued after the worker was lost.")
    row = predictions.get("first")
    assert (row.status, row.worker_id, row.started_at, row.created_at) == (STARTING, None, None, 1.0)
    assert row.logs.endswith("Requeued after the worker was lost.\n")
    again = predictions.claim_next("w2")
    assert (again.id, again.attempts) == ("first", 2)


def test_requeue_of_a_job_its_worker_never_got_gives_the_attempt_back(predictions):
    add(predictions, pred("first"))
    predictions.claim_next("w")
    assert predictions.requeue("first", "Requeued: its worker stopped before it started.", never_ran=True)
    assert predictions.get("first").attempts == 0
    assert predictions.claim_next("w2").attempts == 1


def test_requeue_of_a_queued_prediction_is_refused(predictions):
    add(predictions, pred("p1"))
    assert not predictions.requeue("p1", "no")
    assert not predictions.requeue("missing", "no")


def test_requeue_of_a_cancel_requested_prediction_cancels_it(predictions):
    running_one(predictions)
    predictions.request_cancel("p1")
    assert predictions.requeue("p1", "worker lost")
    assert predictions.get("p1").status == CANCELLED
    assert predictions.claim_next("w") is None


def test_running_lists_processing_rows_optionally_per_worker(predictions):
    add(predictions, pred("p1", created_at=1.0), pred("p2", created_at=2.0), pred("p3", created_at=3.0))
    predictions.claim_next("w1")
    predictions.claim_next("w2")
    assert [p.id for p in predictions.running()] == ["p1", "p2"]
    assert [p.id for p in predictions.running("w2")] == ["p2"]
    assert predictions.running("w9") == []


# -- leases, recovery and fencing ------------------------------------------------------------------


def test_claim_sets_a_lease_held_by_the_worker_for_its_attempt(predictions):
    before = time.time()
    claimed = running_one(predictions, lease_s=60)
    assert claimed.lease == Lease("p1", "w0", 1)
    assert before + 60 <= claimed.lease_expires_at <= time.time() + 60
    assert predictions.get("p1").lease_expires_at == claimed.lease_expires_at


def test_a_heartbeat_renews_the_leases_still_held(predictions):
    claimed = running_one(predictions, lease_s=1)
    assert predictions.renew_leases([claimed.lease], lease_s=60) == []
    assert predictions.get("p1").lease_expires_at >= time.time() + 59
    assert predictions.recover_expired(1) == []


def test_a_heartbeat_reports_a_lease_taken_and_leaves_the_new_holders_alone(predictions):
    lost = running_one(predictions, lease_s=0)
    predictions.recover_expired(2)
    taken = predictions.claim_next("w1", lease_s=60)
    assert predictions.renew_leases([lost.lease], lease_s=3600) == ["p1"]
    assert predictions.get("p1").lease_expires_at == taken.lease_expires_at


def test_recovery_leaves_a_live_lease_alone(predictions):
    running_one(predictions, lease_s=60)
    assert predictions.recover_expired(1) == []
    assert predictions.get("p1").status == PROCESSING


def test_recovery_ends_an_expired_lease_with_no_attempts_left_in_worker_lost(predictions):
    running_one(predictions, lease_s=0)
    add(predictions, pred("queued", created_at=2000.0))
    assert predictions.recover_expired(1) == [("p1", "failed")]
    row = predictions.get("p1")
    assert (row.status, row.error) == (ERROR, WORKER_LOST)
    assert row.logs.endswith("Worker lost: the process running this prediction died.\n")
    assert predictions.get("queued").status == STARTING


def test_recovery_requeues_an_expired_lease_with_attempts_left_then_ends_it(predictions):
    running_one(predictions, lease_s=0)
    assert predictions.recover_expired(2) == [("p1", "requeued")]
    row = predictions.get("p1")
    assert (row.status, row.worker_id, row.lease_expires_at) == (STARTING, None, None)
    assert row.logs.endswith("Requeued after the worker was lost (attempt 1).\n")
    assert predictions.claim_next("w", lease_s=0).attempts == 2
    assert predictions.recover_expired(2) == [("p1", "failed")]
    assert predictions.get("p1").status == ERROR


def test_recovery_of_a_host_takes_its_live_leases_and_no_other_hosts(predictions):
    add(
        predictions,
        pred("mine", created_at=1.0),
        pred("theirs", created_at=2.0),
        pred("alike", created_at=3.0),
    )
    for worker_id in ("host-a:10:w0.1", "host-b:10:w0.1", "host-ab:10:w0.1"):
        predictions.claim_next(worker_id, lease_s=60)
    assert predictions.recover_expired(1, host_id="host-a") == [("mine", "failed")]
    assert [p.id for p in predictions.running()] == ["theirs", "alike"]


def test_recovery_skips_the_jobs_the_caller_still_holds(predictions):
    running_one(predictions, lease_s=0)
    assert predictions.recover_expired(1, skip={"p1"}) == []
    assert predictions.get("p1").status == PROCESSING


def test_a_worker_whose_lease_was_taken_can_record_nothing(predictions):
    old = running_one(predictions, lease_s=0)
    predictions.recover_expired(2)
    current = predictions.claim_next("w1", lease_s=60)
    predictions.append_logs("p1", "step 1/4\n", lease=current.lease)
    before = predictions.get("p1")

    assert not predictions.finish("p1", SUCCESS, output=["out-0.webp"], logs="late\n", lease=old.lease)
    predictions.append_logs("p1", "step 3/4 from the old worker\n", lease=old.lease)
    assert not predictions.requeue("p1", "the old worker's exit", lease=old.lease)
    assert predictions.get("p1") == before

    assert predictions.finish("p1", SUCCESS, output=["out-0.webp"], lease=current.lease)
    assert predictions.get("p1").status == SUCCESS


# -- listing and counts ----------------------------------------------------------------------------


def test_list_returns_the_owners_predictions_newest_first_with_the_total(predictions):
    add(
        predictions, pred("old", created_at=1.0), pred("tie-a", created_at=5.0), pred("tie-b", created_at=5.0)
    )
    add(predictions, pred("other", owner="key-b", created_at=9.0))
    items, total = predictions.list(ListFilter(owner="key-a"))
    assert [p.id for p in items] == ["tie-b", "tie-a", "old"]
    assert total == 3


def test_list_pages_with_limit_and_offset(predictions):
    add(predictions, *(pred(f"p{i}", created_at=float(i + 1)) for i in range(5)))
    items, total = predictions.list(ListFilter(owner="key-a", limit=2, offset=1))
    assert [p.id for p in items] == ["p3", "p2"]
    assert total == 5
    items, total = predictions.list(ListFilter(owner="key-a", limit=2, offset=10))
    assert (items, total) == ([], 5)


def test_list_filters_by_status_model_and_dates(predictions):
    add(
        predictions,
        pred("a", created_at=10.0),
        pred("b", created_at=20.0, model="flux-schnell"),
        pred("c", created_at=30.0),
        pred("d", created_at=40.0),
    )
    predictions.request_cancel("c")
    assert [p.id for p in predictions.list(ListFilter(owner="key-a", status=CANCELLED))[0]] == ["c"]
    assert [p.id for p in predictions.list(ListFilter(owner="key-a", model="flux-schnell"))[0]] == ["b"]
    items, total = predictions.list(ListFilter(owner="key-a", created_from=20.0, created_to=30.0))
    assert ([p.id for p in items], total) == (["c", "b"], 2)  # both ends inclusive
    items, total = predictions.list(
        ListFilter(owner="key-a", status=STARTING, model="flux-dev", created_from=15.0)
    )
    assert ([p.id for p in items], total) == (["d"], 1)


def test_list_q_matches_a_case_insensitive_substring_of_the_prompt(predictions):
    add(
        predictions,
        pred("a", created_at=1.0, input={"prompt": "A Red Fox"}),
        pred("b", created_at=2.0, input={"prompt": "blue whale"}),
        pred("c", created_at=3.0, input={"prompt": "ÄRGER red"}),
        pred("d", created_at=4.0, input={"image": "no prompt at all"}),
        pred("e", created_at=5.0, input={"prompt": "red"}, owner="key-b"),
    )
    items, total = predictions.list(ListFilter(owner="key-a", q="rEd"))
    assert ([p.id for p in items], total) == (["c", "a"], 2)
    assert [p.id for p in predictions.list(ListFilter(owner="key-a", q="ärger"))[0]] == ["c"]
    assert [p.id for p in predictions.list(ListFilter(owner="key-a", q="%"))[0]] == []
    items, total = predictions.list(ListFilter(owner="key-a", q="red", limit=1, offset=1))
    assert ([p.id for p in items], total) == (["a"], 2)


def test_delete_removes_an_ended_prediction(predictions):
    add(predictions, pred("done"), pred("kept"))
    predictions.request_cancel("done")

    assert predictions.delete("done") is True
    assert predictions.get("done") is None
    assert predictions.get("kept") is not None
    assert predictions.list(ListFilter(owner="key-a"))[1] == 1


def test_delete_refuses_a_queued_or_running_prediction(predictions):
    running_one(predictions, "run")
    add(predictions, pred("queued"))

    assert predictions.delete("run") is False
    assert predictions.delete("queued") is False
    assert predictions.get("run").status == PROCESSING
    assert predictions.get("queued").status == STARTING


def test_delete_of_an_unknown_prediction_is_false(predictions):
    assert predictions.delete("nope") is False


def test_counts_by_status_reports_every_status_including_zeros(predictions):
    assert predictions.counts_by_status() == dict.fromkeys(ALL_STATUSES, 0)
    add(predictions, pred("p1", created_at=1.0), pred("p2", created_at=2.0), pred("p3", created_at=3.0))
    predictions.claim_next("w")
    predictions.request_cancel("p3")
    assert predictions.counts_by_status() == {STARTING: 1, PROCESSING: 1, SUCCESS: 0, ERROR: 0, CANCELLED: 1}


# -- progress: queue position and live previews ----------------------------------------------------


def test_queue_position_counts_the_same_models_queued_predictions_created_before(predictions):
    add(
        predictions,
        pred("first", created_at=1.0),
        pred("tie-1", created_at=2.0, owner="key-b"),
        pred("tie-2", created_at=2.0),
        pred("other-model", created_at=1.5, model="flux-schnell"),
        pred("last", created_at=3.0),
    )
    position = {pid: predictions.queue_position(predictions.get(pid)) for pid in ("first", "tie-2", "last")}
    assert position == {"first": 0, "tie-2": 2, "last": 3}
    assert predictions.queue_position(predictions.get("other-model")) == 0


def test_queue_position_leaves_out_running_and_cancelled_ones_and_is_none_once_claimed(predictions):
    add(predictions, *(pred(f"p{n}", created_at=float(n)) for n in range(1, 5)))
    claimed = predictions.claim_next("w")
    predictions.request_cancel("p2")
    assert predictions.queue_position(predictions.get("p4")) == 1  # p3 only
    assert predictions.queue_position(predictions.get(claimed.id)) is None


def test_the_newest_preview_replaces_the_one_before(predictions):
    job = running_one(predictions)
    assert predictions.get_preview(job.id) is None
    assert predictions.put_preview(job.id, 4, b"first", lease=job.lease)
    assert predictions.put_preview(job.id, 8, b"second", lease=job.lease)
    preview = predictions.get_preview(job.id)
    assert (preview.step, preview.data, preview.content_type) == (8, b"second", "image/webp")
    assert predictions.preview_step(job.id) == 8


def test_a_preview_is_refused_unless_the_prediction_runs_under_the_lease(predictions):
    job = running_one(predictions, "p1")
    add(predictions, pred("queued", created_at=2000.0))
    assert not predictions.put_preview("queued", 1, b"x")
    assert not predictions.put_preview("missing", 1, b"x")
    stale = Lease(job.id, job.worker_id, job.attempts + 1)
    assert not predictions.put_preview(job.id, 1, b"x", lease=stale)
    assert predictions.get_preview("queued") is None and predictions.get_preview(job.id) is None


@pytest.mark.parametrize("end", ["success", "error", "cancelled", "requeued"])
def test_every_end_drops_the_preview(predictions, end):
    job = running_one(predictions)
    predictions.put_preview(job.id, 2, b"webp", lease=job.lease)
    if end == "requeued":
        assert predictions.requeue(job.id, "again", lease=job.lease)
    elif end == "cancelled":
        predictions.request_cancel(job.id)
        assert predictions.finish(job.id, CANCELLED, lease=job.lease)
    else:
        assert predictions.finish(job.id, end, lease=job.lease)
    assert predictions.get_preview(job.id) is None
    assert predictions.preview_step(job.id) is None
    assert not predictions.put_preview(job.id, 3, b"late", lease=job.lease)  # a late one is refused


def test_recovering_a_lost_worker_drops_its_preview(predictions):
    job = running_one(predictions, lease_s=0.0)
    predictions.put_preview(job.id, 2, b"webp")
    assert predictions.recover_expired(1) == [(job.id, "failed")]
    assert predictions.get_preview(job.id) is None


# -- retention and webhooks ------------------------------------------------------------------------


def test_finished_before_and_mark_data_removed(predictions, monkeypatch):
    add(predictions, pred("old"), pred("new"), pred("queued"))
    monkeypatch.setattr(time, "time", lambda: 100.0)
    predictions.request_cancel("old")
    monkeypatch.setattr(time, "time", lambda: 200.0)
    predictions.request_cancel("new")
    monkeypatch.undo()

    assert [p.id for p in predictions.finished_before(150.0)] == ["old"]
    assert [p.id for p in predictions.finished_before(250.0)] == ["old", "new"]
    assert [p.id for p in predictions.finished_before(250.0, limit=1)] == ["old"]
    predictions.mark_data_removed("old")
    assert predictions.get("old").data_removed
    assert [p.id for p in predictions.finished_before(250.0)] == ["new"]


def test_ended_with_webhook_since_lists_recent_ends_that_have_a_webhook(predictions, monkeypatch):
    add(
        predictions,
        pred("old", created_at=1.0, webhook_url="http://hook"),
        pred("hooked", created_at=2.0, webhook_url="http://hook"),
        pred("plain", created_at=3.0),
        pred("queued", created_at=4.0, webhook_url="http://hook"),
    )
    for _ in range(3):
        predictions.claim_next("w")
    with monkeypatch.context() as past:
        past.setattr(time, "time", lambda: 10.0)
        predictions.finish("old", SUCCESS, output=[])
    predictions.finish("hooked", ERROR, error="boom")
    predictions.finish("plain", SUCCESS, output=[])
    assert predictions.ended_with_webhook_since(100.0) == ["hooked"]
    assert predictions.ended_with_webhook_since(0.0) == ["old", "hooked"]


# -- the key store ---------------------------------------------------------------------------------


def test_create_returns_a_prefixed_unguessable_key(keys):
    key = keys.create("alice")
    assert key.startswith("fsk_")
    assert len(key) >= 40
    assert keys.create("bob") != key


def test_list_shows_created_keys_with_their_dates(keys, clock):
    keys.create("alice")
    clock.now += 5
    keys.create("bob")
    listed = keys.list()
    assert [k.name for k in listed] == ["alice", "bob"]
    assert listed[0].created_at == 1_700_000_000.0
    assert listed[0].last_used_at is None and listed[0].revoked_at is None
    assert all(len(k.key_id) == 32 for k in listed)


def test_lookup_finds_an_active_key_by_its_hash(keys):
    key = keys.create("alice")
    info = keys.lookup(hash_key(key))
    assert isinstance(info, KeyInfo)
    assert info.name == "alice"
    assert info.key_id == key_id_from_hash(hash_key(key))


def test_lookup_of_an_unknown_hash_is_none(keys):
    keys.create("alice")
    assert keys.lookup(hash_key("fsk_not-a-key")) is None


def test_revoke_stops_lookup_and_records_the_time(keys, clock):
    key = keys.create("alice")
    clock.now += 10
    assert keys.revoke("alice") is True
    assert keys.lookup(hash_key(key)) is None
    [info] = keys.list()
    assert info.revoked and info.revoked_at == clock.now


def test_revoke_of_an_unknown_name_is_false(keys):
    assert keys.revoke("nobody") is False


def test_revoke_twice_is_false_the_second_time(keys):
    keys.create("alice")
    assert keys.revoke("alice") is True
    assert keys.revoke("alice") is False


def test_duplicate_active_name_is_refused(keys):
    keys.create("alice")
    with pytest.raises(ValueError, match="already exists"):
        keys.create("alice")
    assert len(keys.list()) == 1


def test_a_revoked_name_can_be_given_to_a_new_key(keys):
    old = keys.create("ci")
    keys.revoke("ci")
    new = keys.create("ci")
    assert keys.lookup(hash_key(old)) is None
    assert keys.lookup(hash_key(new)).name == "ci"
    assert [k.revoked for k in keys.list()] == [True, False]


@pytest.mark.parametrize("name", ["", "   ", "has space", "-leading-dash", "x" * 65, "semi;colon", None])
def test_invalid_names_are_refused(keys, name):
    with pytest.raises(ValueError):
        keys.create(name)


@pytest.mark.parametrize("name", ["anonymous", "config-1", "Config-2"])
def test_names_the_keyring_uses_are_reserved(keys, name):
    with pytest.raises(ValueError, match="reserved"):
        keys.create(name)


def test_touch_records_last_use(keys, clock):
    key = keys.create("alice")
    info = keys.lookup(hash_key(key))
    clock.now += 3
    keys.touch(info.key_id)
    assert keys.lookup(hash_key(key)).last_used_at == clock.now


def test_touch_writes_at_most_once_a_minute_per_key(keys, clock):
    key = keys.create("alice")
    key_id = keys.lookup(hash_key(key)).key_id
    keys.touch(key_id)
    first = clock.now
    clock.now += 30
    keys.touch(key_id)
    assert keys.lookup(hash_key(key)).last_used_at == first
    clock.now += 31
    keys.touch(key_id)
    assert keys.lookup(hash_key(key)).last_used_at == clock.now


def test_touch_throttle_is_per_key(keys, clock):
    a = keys.create("alice")
    b = keys.create("bob")
    keys.touch(keys.lookup(hash_key(a)).key_id)
    clock.now += 1
    keys.touch(keys.lookup(hash_key(b)).key_id)
    assert keys.lookup(hash_key(b)).last_used_at == clock.now


def test_has_keys_stays_true_after_every_key_is_revoked(keys):
    assert keys.has_keys() is False
    keys.create("alice")
    keys.revoke("alice")
    assert keys.has_keys() is True


# -- the delivery store ----------------------------------------------------------------------------


def enqueue(store: DeliveryStore, prediction_id: str = "p1", event: str = "completed", now: float = 100.0):
    return store.enqueue(
        prediction_id, event, "replicate", "https://example.com/hook", {"id": prediction_id}, now=now
    )


def test_a_delivery_is_enqueued_once_per_prediction_and_event(deliveries):
    first = enqueue(deliveries)
    assert first is not None
    assert enqueue(deliveries) is None
    assert enqueue(deliveries, event="finished") is not None
    [row, _other] = deliveries.for_prediction("p1")
    assert (row.id, row.state, row.attempts, row.payload) == (first, PENDING, 0, {"id": "p1"})
    assert deliveries.with_deliveries(["p1", "p2"]) == {"p1"}


def test_a_claimed_delivery_is_hidden_until_its_lease_passes(deliveries):
    delivery_id = enqueue(deliveries)
    assert [d.id for d in deliveries.claim_due(60, now=100.0)] == [delivery_id]
    assert deliveries.claim_due(60, now=150.0) == []
    assert [d.id for d in deliveries.claim_due(60, now=161.0)] == [delivery_id]


def test_a_released_delivery_is_due_again_with_its_attempts_unchanged(deliveries):
    delivery_id = enqueue(deliveries)
    deliveries.claim_due(60, now=100.0)
    deliveries.release(delivery_id, now=110.0)
    [again] = deliveries.claim_due(60, now=110.0)
    assert (again.id, again.attempts) == (delivery_id, 0)


def test_recorded_attempts_end_or_reschedule_a_delivery(deliveries):
    done, retried = enqueue(deliveries, "p1"), enqueue(deliveries, "p2")
    deliveries.claim_due(60, now=100.0)
    deliveries.record_attempt(done, 1, DELIVERED, now=101.0)
    deliveries.record_attempt(retried, 1, PENDING, next_attempt_at=200.0, error="HTTP 500", now=101.0)
    assert deliveries.next_due_at() == 200.0
    assert deliveries.claim_due(60, now=199.0) == []
    [row] = deliveries.claim_due(60, now=200.0)
    assert (row.id, row.attempts, row.last_error) == (retried, 1, "HTTP 500")
    deliveries.record_attempt(retried, 2, FAILED, error="HTTP 500", now=201.0)
    assert deliveries.next_due_at() is None
    assert deliveries.get(done).state == DELIVERED


def test_prune_deletes_only_ended_deliveries_last_touched_before_the_time(deliveries):
    done, pending = enqueue(deliveries, "p1"), enqueue(deliveries, "p2")
    deliveries.record_attempt(done, 1, DELIVERED, now=101.0)
    assert deliveries.prune(finished_before=1000.0) == 1
    assert deliveries.get(done) is None
    assert deliveries.get(pending) is not None


def test_each_owner_has_one_signing_secret_until_it_is_rotated(deliveries):
    alice = deliveries.signing_secret("alice")
    assert alice.startswith(SIGNING_SECRET_PREFIX)
    assert deliveries.signing_secret("alice") == alice
    assert deliveries.signing_secret("bob") != alice
    rotated = deliveries.rotate_signing_secret("alice")
    assert rotated != alice
    assert deliveries.signing_secret("alice") == rotated


# -- worker hosts' heartbeats ------------------------------------------------------------------
def test_a_recorded_host_is_listed_with_its_report(predictions):
    slots = [{"index": 0, "state": "ready", "gpu": "0"}, {"index": 1, "state": "busy"}]
    predictions.record_host(HostReport("gpu-a", slots=slots, models=["flux-dev"]))
    [host] = predictions.hosts(seen_within_s=10)
    assert (host.host_id, host.slots, host.models, host.accepting) == ("gpu-a", slots, ["flux-dev"], True)
    assert 0 <= host.seen_s_ago < 5


def test_a_heartbeat_replaces_the_hosts_previous_report(predictions):
    predictions.record_host(HostReport("gpu-a", slots=[{"index": 0, "state": "starting"}]))
    predictions.record_host(HostReport("gpu-a", slots=[{"index": 0, "state": "ready"}], accepting=False))
    [host] = predictions.hosts(seen_within_s=10)
    assert host.slots == [{"index": 0, "state": "ready"}] and host.accepting is False


def test_hosts_not_seen_lately_are_left_out(predictions):
    predictions.record_host(HostReport("gpu-a"))
    time.sleep(0.3)
    predictions.record_host(HostReport("gpu-b"))
    assert [h.host_id for h in predictions.hosts(seen_within_s=0.2)] == ["gpu-b"]


def test_a_forgotten_host_is_no_longer_listed(predictions):
    predictions.record_host(HostReport("gpu-a"))
    predictions.record_host(HostReport("gpu-b"))
    predictions.forget_host("gpu-a")
    assert [h.host_id for h in predictions.hosts(seen_within_s=10)] == ["gpu-b"]
