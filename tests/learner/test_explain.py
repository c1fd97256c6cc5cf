import pytest

from learner.explain import Explainer, merge_word_pieces


@pytest.fixture
def trained(tiny_learner):
    learner = tiny_learner()
    texts = ["my card was stolen", "card lost yesterday", "what is the exchange rate",
             "exchange rate for euros"] * 3
    labels = ["lost", "lost", "rate", "rate"] * 3
    for _ in range(3):
        learner.learn_many("feedback", texts, labels)
    return learner


@pytest.mark.parametrize("method", ["ig", "gxi"])
def test_words_cover_the_text_and_scores_are_finite(trained, method):
    text = "My card was  stolen, block it!"
    ex = Explainer(trained, steps=8).explain("feedback", text, method=method)
    assert ex.words == [text[a:b] for a, b in ex.spans]
    assert [w.lower() for w in ex.words] == ["my", "card", "was", "stolen", ",", "block", "it", "!"]
    assert len(ex.scores) == len(ex.words) and all(abs(s) < 1e6 for s in ex.scores)
    assert ex.label == ex.predicted and 0 <= ex.probability <= 1
    assert "<span" in ex.to_html() and ex.to_dict()["words"][0]["word"] == "My"


def test_ig_is_complete(trained):
    """IG's attributions add up to p(x) - p(baseline); the reported delta is the gap."""
    ex = Explainer(trained, steps=64).explain("feedback", "exchange rate for dollars")
    assert ex.delta is not None and ex.delta < 0.05


def test_chosen_label_and_bad_inputs(trained, tiny_learner):
    ex = Explainer(trained, steps=4).explain("feedback", "card lost", label="rate")
    assert ex.label == "rate"
    with pytest.raises(ValueError, match="not a label"):
        Explainer(trained).explain("feedback", "x", label="nope")
    with pytest.raises(ValueError, match="no labels yet"):
        Explainer(tiny_learner()).explain("feedback", "x")
    with pytest.raises(ValueError, match="method"):
        Explainer(trained).explain("feedback", "x", method="shap")
    with pytest.raises(ValueError, match="empty"):
        Explainer(trained).explain("feedback", "   ")


def test_merge_word_pieces_sums_per_word():
    words, spans, scores = merge_word_pieces(
        "unbelievable card", [None, 0, 0, 1, None], [(0, 0), (0, 2), (2, 12), (13, 17), (0, 0)],
        [9, 1, 2, 3, 9])
    assert words == ["unbelievable", "card"] and scores == [3.0, 3.0] and spans == [(0, 12), (13, 17)]
