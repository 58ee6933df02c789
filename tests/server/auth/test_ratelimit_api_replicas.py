"""Two API replicas (``serve --no-workers``) on one PostgreSQL store and one Redis: a key's
per-minute budget is one budget, whichever replica the requests reach."""

from __future__ import annotations

from tests.server.helpers import KEY_A, KEY_B, LiveServer

BUDGET = 3


def test_two_api_replicas_with_redis_enforce_one_per_minute_budget(
    postgres_server, redis_server, tmp_path, tiny_model_dir
):
    settings = {
        "store_url": postgres_server.new_database(),
        "limits": {"requests_per_minute": BUDGET, "storage_uri": redis_server.url},
    }
    replicas = [LiveServer(tmp_path / name, tiny_model_dir, role="api", **settings) for name in ("a", "b")]
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_started(None)
        statuses = [replicas[n % 2].post_create(KEY_A).status_code for n in range(BUDGET + 2)]
        other_key = replicas[1].post_create(KEY_B)
    finally:
        for replica in replicas:
            replica.terminate()
        for replica in replicas:
            replica.close()
    assert statuses == [200] * BUDGET + [429, 429]  # 2 through A and 1 through B use it all up
    assert other_key.status_code == 200  # another key's budget is its own
