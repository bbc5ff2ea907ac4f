"""The LLM-judge client and the TAR reward against a real local chat-completions server.

The server (fake_judge.py) answers normally, slowly (beyond the timeout), with HTTP 500 (once or
always), with prose instead of JSON, with an HTML body, or with 401, chosen per request.
"""

import asyncio
import json
import logging
import time

import pytest

from megatron_vrft.rewards import RewardConfigError, RewardInputError, get_reward
from megatron_vrft.rewards.judge import ChatRequest, JudgeClient, JudgeConfig, judge_client
from megatron_vrft.rewards.tar import claims_from_mapping, parse_claims_json, parse_decision

GT = {"00:12": "The sauce looks thick.", "00:15-00:18": "The chef pours water into the pan."}
SECRET = "sk-test-DO-NOT-LOG-0123456789"


def _think(claims: dict, extra: str = "") -> str:
    """A completion whose think makes the fake judge return ``claims``."""
    return f"<think>CLAIMS: {json.dumps(claims)}\n{extra}</think>\n<answer>B. to thin the sauce</answer>"


@pytest.fixture
def client_factory(fake_judge):
    base_url, _ = fake_judge
    made = []

    def make(**overrides):
        options = dict(base_url=base_url, model="judge", timeout_s=3.0, max_retries=2, backoff_s=0.01, concurrency=4)
        options.update(overrides)
        client = JudgeClient(JudgeConfig(**options))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _req(user: str) -> ChatRequest:
    return ChatRequest("Answer TRUE or FALSE.", user, parse_decision)


def test_normal_answers_and_key_header(client_factory, fake_judge, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_TEST", SECRET)
    _, server = fake_judge
    client = client_factory(api_key_env="JUDGE_KEY_TEST")
    assert client.run([_req("ok"), _req("INCONSISTENT")]) == [True, False]
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    assert client.stats.as_dict() == {"requests": 2, "attempts": 2, "retries": 0, "failures": 0, "reasons": {}}


def test_500_then_success_is_retried(client_factory, fake_judge):
    _, server = fake_judge
    client = client_factory()
    assert client.run([_req("MODE:500once")]) == [True]
    assert server.count("MODE:500once") == 2
    assert client.stats.retries == 1 and client.stats.failures == 0
    assert client.stats.reasons == {"http_500": 1}


def test_final_failures_give_none_with_counted_reasons(client_factory, fake_judge, caplog, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_TEST", SECRET)
    _, server = fake_judge
    client = client_factory(api_key_env="JUDGE_KEY_TEST", timeout_s=1.5, max_retries=1)
    users = ["ok", "MODE:500always", "MODE:garbage", "MODE:notjson", "MODE:401", "MODE:slow"]
    with caplog.at_level(logging.DEBUG):
        out = client.run([_req(u) for u in users])
    assert out == [True, None, None, None, None, None]
    # 2 attempts (max_retries=1) for every retryable failure, 1 for the 401; the server counts a
    # request when its handler reads it, which for the slow one's retry can lag the client's timeout
    deadline = time.monotonic() + 10
    while server.count("MODE:slow") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [server.count(u) for u in users[1:]] == [2, 2, 2, 1, 2]
    stats = client.stats
    assert stats.failures == 5 and stats.requests == 6 and stats.retries == 4
    assert stats.reasons == {"http_500": 2, "unparsable": 2, "bad_response": 2, "http_401": 1, "timeout": 2}
    assert "5 of 6 calls failed after up to 2 attempts" in caplog.text
    assert SECRET not in caplog.text


def test_concurrency_is_bounded(client_factory, fake_judge):
    _, server = fake_judge
    server.delay_s = 0.1
    client = client_factory(model="judge-concurrency", concurrency=2)
    assert client.run([_req(f"ok {i}") for i in range(8)]) == [True] * 8
    assert server.peak_in_flight["judge-concurrency"] == 2


def test_sync_run_inside_a_running_event_loop_and_arun(client_factory):
    client = client_factory()

    async def caller():
        blocking = client.run([_req("ok")])  # a sync trainer hook called from async code
        awaited = await client.arun([_req("INCONSISTENT")])
        return blocking, awaited

    assert asyncio.run(caller()) == ([True], [False])


def test_config_validation():
    with pytest.raises(RewardConfigError, match="needs `base_url` and `model`"):
        JudgeConfig(base_url="", model="m")
    with pytest.raises(RewardConfigError, match="concurrency"):
        JudgeConfig(base_url="http://x", model="m", concurrency=0)
    with pytest.raises(RewardConfigError, match="needs `base_url` and `model`"):
        get_reward("tar")(["<think>a</think>"], temporal_grounding=[GT])


def test_judge_answer_parsers():
    assert parse_claims_json('```json\n{"00:01": "A."}\n```') == {"00:01": "A."}
    assert parse_claims_json('<think>{"no": 1}</think>{"00:02": "B."}') == {"00:02": "B."}
    assert parse_decision("\n  true - they agree") is True
    assert parse_decision("Verdict: FALSE") is False
    claims = claims_from_mapping(
        {"01:02:03": "Late.", "00:18-00:15": "Reversed.", "00:05.6": "Rounded.", "00:40-end": "Open.", "x": "Bad.", "00:01": ""}
    )
    assert [(c.start, c.end, c.sentence) for c in claims] == [(6, 6, "Rounded."), (15, 18, "Reversed."), (3723, 3723, "Late.")]


# ----------------------------------------------------------------------------------------------
# TAR end to end


def _tar(base_url, model, **overrides):
    options = dict(base_url=base_url, model=model, timeout_s=1.5, max_retries=1, backoff_s=0.01)
    options.update(overrides)
    return get_reward("tar", **options)


def test_tar_scores_from_the_formula(fake_judge):
    base_url, server = fake_judge
    tar = _tar(base_url, "tar-scores")
    completions = [
        # both claims overlap their GT (within the 2 s buffer) with identical sentences -> 2/2
        _think({"00:13": "The sauce looks thick.", "00:16": "The chef pours water into the pan."}),
        # second claim at 00:40 is far from every GT interval -> 1/2
        _think({"00:13": "The sauce looks thick.", "00:40": "The chef pours water into the pan."}),
        # paraphrase (cosine ~0.78 >= 0.75) at the right time -> 1/1
        _think({"00:17": "Someone adds water to the pan."}),
        # right time, unrelated sentence (cosine < 0.75) -> 0/1
        _think({"00:12": "A dog runs across the yard."}),
        # one-to-one: two predictions compete for one GT claim -> 1/2
        _think({"00:11": "The sauce looks thick.", "00:13": "The sauce looks thick."}),
        # perfect claims but THINK and ANSWER inconsistent -> 0
        _think({"00:13": "The sauce looks thick."}, extra="INCONSISTENT"),
        # the judge finds no timestamp -> 0
        _think({}),
        # no think at all -> 0 without calling the judge
        "<answer>B</answer>",
        # no ground truth -> not applicable, no judge call
        _think({"00:13": "The sauce looks thick."}),
    ]
    grounding = [GT] * 8 + [None]
    out = tar(completions, temporal_grounding=grounding, question=["Why add water?"] * 9)
    assert out == pytest.approx([1.0, 0.5, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, None])
    assert len(server.requests) == 2 * 7  # extraction + consistency for the 7 scored rows
    assert all("Why add water?" in r["user"] for r in server.requests if "QUESTION" in r["user"])


def test_tar_buffer_option(fake_judge):
    base_url, _ = fake_judge
    # 5 s after the GT end: both intervals are widened, so a buffer b bridges gaps up to 2b
    completion = [_think({"00:23": "The chef pours water into the pan."})]
    assert _tar(base_url, "tar-buf2")(completion, temporal_grounding=[GT]) == [0.0]
    assert _tar(base_url, "tar-buf3", buffer_seconds=3)(completion, temporal_grounding=[GT]) == [1.0]


def test_tar_judge_failures_give_none_and_the_batch_goes_on(fake_judge, caplog):
    base_url, server = fake_judge
    tar = _tar(base_url, "tar-failures")
    good = {"00:13": "The sauce looks thick."}
    completions = [
        _think(good),
        _think(good, "MODE:slow"),
        _think(good, "MODE:500once"),
        _think(good, "MODE:garbage"),
        _think(good, "MODE:notjson"),
    ]
    with caplog.at_level(logging.WARNING):
        out = tar(completions, temporal_grounding=[GT] * 5)
    assert out == [1.0, None, 1.0, None, None]
    stats = judge_client(JudgeConfig(base_url=base_url, model="tar-failures", timeout_s=1.5, max_retries=1, backoff_s=0.01)).stats
    # both calls (extraction + consistency) fail for each of the 3 failing rows
    assert stats.failures == 6 and stats.requests == 10
    assert stats.reasons == {"timeout": 4, "http_500": 2, "unparsable": 4, "bad_response": 4}
    assert "6 of 10 calls failed" in caplog.text


def test_tar_rejects_a_non_dict_grounding(fake_judge):
    base_url, _ = fake_judge
    with pytest.raises(RewardInputError, match="temporal_grounding of row 0 must be a"):
        _tar(base_url, "tar-bad")(["<think>x</think>"], temporal_grounding=[["00:12", "x"]])
