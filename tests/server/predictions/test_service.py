"""The prediction service against a real SQLite store and the in-process feed: what every contract
relies on (create resolves and stores the inputs, owners see only their own, cancel tells the feed,
list pages, the limits and refusals are domain errors)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipelines.spec import ModelSpec
from server.predictions.errors import (
    AlreadyFinished,
    CreateFailed,
    InFlightLimitExceeded,
    InvalidInput,
    ModelUnavailable,
    NotAccepting,
    NotFound,
    ShuttingDown,
)
from server.predictions.feed import Change, ChangeKind, InProcessChangeFeed
from server.predictions.model import CANCELLED, STARTING, SUCCESS, CancelOutcome, ListFilter
from server.predictions.models import ModelEntry
from server.predictions.service import CreateRequest, PredictionService, Readiness
from server.store import SQLitePredictionStore
from tests.server.helpers import run_in_own_loop

MODEL = ModelEntry.from_spec(ModelSpec(defaults={"num_inference_steps": 4, "output_format": "png"}))


class FakeReadiness(Readiness):
    def __init__(self) -> None:
        self.refused: NotAccepting | None = None
        self.failures: list[BaseException] = []
        self.working = 0

    def refusal(self, model: ModelEntry | None = None) -> NotAccepting | None:
        return self.refused

    def health(self) -> tuple[str, dict[str, Any]]:
        return "READY", {}

    @property
    def serving_tiny_model(self) -> bool:
        return False

    def store_failed(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def store_working(self) -> None:
        self.working += 1


@pytest.fixture
def store(tmp_path: Path):
    s = SQLitePredictionStore(tmp_path / "fluxserve.db")
    yield s
    s.close()


@pytest.fixture
def readiness() -> FakeReadiness:
    return FakeReadiness()


@pytest.fixture
def service(store, readiness) -> PredictionService:
    return PredictionService(store, InProcessChangeFeed(), readiness, max_in_flight=2, max_image_bytes=1000)


def request(owner: str = "key-a", **input: Any) -> CreateRequest:
    return CreateRequest(owner=owner, model=MODEL, input={"prompt": "a fox", **input})


def run(coro) -> Any:
    return run_in_own_loop(coro)


def recorded(feed: InProcessChangeFeed) -> list[Change]:
    changes: list[Change] = []
    feed.subscribe(list(ChangeKind), changes.append)
    return changes


def test_create_stores_the_input_as_sent_and_the_params_resolved_with_the_models_defaults(service, store):
    pred = run(service.create(request(guidance="2.5", seed=None)))

    row = store.get(pred.id)
    assert row.status == STARTING and row.owner == "key-a" and row.model == "flux-dev"
    assert row.input == {"prompt": "a fox", "guidance": "2.5", "seed": None}
    assert pred.params["guidance"] == 2.5  # the numeric string, as a number
    assert pred.params["num_inference_steps"] == 4  # the model's default
    assert pred.params["output_format"] == "png"


def test_create_tells_the_feed_it_was_created(service):
    changes = recorded(service.feed)
    pred = run(service.create(request()))
    assert changes == [Change(ChangeKind.CREATED, pred.id)]


def test_invalid_inputs_are_refused_field_by_field_and_nothing_is_stored(service, store):
    with pytest.raises(InvalidInput) as refused:
        run(service.create(request(num_outputs="many", guidance=-1)))
    assert set(refused.value.fields) == {"num_outputs", "guidance"}
    assert store.counts_by_status()[STARTING] == 0


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (CreateRequest(owner="key-a", model=MODEL, input=None), "input"),
        (
            CreateRequest(owner="key-a", model=MODEL, input={"prompt": "x", "guidance": float("nan")}),
            "guidance",
        ),
        (
            CreateRequest(
                owner="key-a",
                model=MODEL,
                input={"prompt": "x", "image": "data:image/png;base64," + "A" * 4000},
            ),
            "image",
        ),
        (
            CreateRequest(owner="key-a", model=MODEL, input={"prompt": "x"}, webhook_url="ftp://x"),
            "webhook_url",
        ),
    ],
    ids=["no input", "not finite", "inline image too large", "webhook not http"],
)
def test_a_request_the_input_model_cannot_judge_is_refused_naming_its_field(service, req, field):
    with pytest.raises(InvalidInput) as refused:
        service.prepare(req)
    assert list(refused.value.fields) == [field]


def test_the_in_flight_limit_is_per_owner(service):
    run(service.create(request()))
    run(service.create(request()))
    with pytest.raises(InFlightLimitExceeded) as refused:
        run(service.create(request()))
    assert (refused.value.in_flight, refused.value.limit) == (2, 2)
    run(service.create(request(owner="key-b")))  # another owner's budget is its own


@pytest.mark.parametrize(
    "refusal", [ModelUnavailable("no GPU"), ShuttingDown()], ids=["setup failed", "draining"]
)
def test_nothing_is_created_while_the_workers_refuse(service, readiness, store, refusal):
    readiness.refused = refusal
    with pytest.raises(NotAccepting) as refused:
        run(service.create(request()))
    assert refused.value is refusal
    assert store.counts_by_status()[STARTING] == 0


def test_a_store_that_fails_the_create_is_reported_and_nothing_is_made(
    service, readiness, store, monkeypatch
):
    def full_disk(*_args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "create", full_disk)
    with pytest.raises(CreateFailed):
        run(service.create(request()))
    assert [type(e) for e in readiness.failures] == [OSError]
    assert readiness.working == 0


def test_a_prediction_is_found_by_its_owner_only(service):
    pred = run(service.create(request()))
    assert run(service.get("key-a", pred.id)).id == pred.id
    for owner, pid in (("key-b", pred.id), ("key-a", "no-such-id"), ("key-a", "x" * 65)):
        with pytest.raises(NotFound):
            run(service.get(owner, pid))


def test_cancelling_a_queued_prediction_ends_it_and_tells_the_feed_it_ended(service, store):
    pred = run(service.create(request()))
    changes = recorded(service.feed)
    assert run(service.cancel("key-a", pred.id)) is CancelOutcome.CANCELLED
    assert store.get(pred.id).status == CANCELLED
    assert changes == [Change(ChangeKind.ENDED, pred.id)]


def test_cancelling_a_running_prediction_asks_its_worker_through_the_feed(service, store):
    pred = run(service.create(request()))
    store.claim_next("w0")
    changes = recorded(service.feed)
    assert run(service.cancel("key-a", pred.id)) is CancelOutcome.REQUESTED
    assert store.get(pred.id).cancel_requested
    assert changes == [Change(ChangeKind.CANCEL_REQUESTED, pred.id)]


def test_cancelling_a_finished_prediction_names_the_status_it_ended_with(service, store):
    pred = run(service.create(request()))
    store.claim_next("w0")
    store.finish(pred.id, SUCCESS, output=["out-0.webp"])
    with pytest.raises(AlreadyFinished) as refused:
        run(service.cancel("key-a", pred.id))
    assert refused.value.status == SUCCESS
    with pytest.raises(NotFound):
        run(service.cancel("key-b", pred.id))


def test_list_gives_the_owners_predictions_newest_first_with_the_total(service):
    made = [run(service.create(request(owner=owner))).id for owner in ("key-a", "key-b", "key-a")]
    preds, total = run(service.list(ListFilter(owner="key-a", limit=1)))
    assert total == 2
    assert [p.id for p in preds] == [made[2]]


def test_a_waiter_is_woken_by_the_end_before_its_polling_interval(service, store):
    pred = run(service.create(request()))

    async def main() -> tuple[str, float]:
        await service.feed.start()
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(service.wait_for_end(pred.id, 10))
        await asyncio.sleep(0.05)
        started = loop.time()
        store.claim_next("w0")
        store.finish(pred.id, SUCCESS, output=["out-0.webp"])
        service.feed.ended(pred.id)
        ended = await waiting
        return ended.status, loop.time() - started

    status, waited = run(main())
    assert status == SUCCESS
    assert waited < 0.4  # the fallback re-read comes only after 0.5 s


def test_a_waiter_sees_an_end_no_one_told_it_of(service, store):
    """A change made by another process reaches no in-process feed: the polling backstop finds it."""
    pred = run(service.create(request()))

    async def main() -> str:
        await service.feed.start()
        waiting = asyncio.create_task(service.wait_for_end(pred.id, 10))
        await asyncio.sleep(0.05)
        store.claim_next("w0")
        store.finish(pred.id, SUCCESS, output=["out-0.webp"])  # and no feed.ended
        return (await asyncio.wait_for(waiting, 2)).status

    assert run(main()) == SUCCESS


def test_a_wait_that_runs_out_answers_the_prediction_as_it_is(service):
    pred = run(service.create(request()))
    assert run(service.wait_for_end(pred.id, 0.05)).status == STARTING
