import pytest
import torch

from learner import GrowingHead, resolve_device
from learner.model import head_key


def test_growth_keeps_old_logits_bit_exact():
    torch.manual_seed(0)
    head = GrowingHead(16)
    head.grow(3)
    with torch.no_grad():
        head.weights[0].normal_()
        head.biases[0].normal_()
    x = torch.randn(5, 16)  # (B, H)
    before = head(x)  # (B, 3)
    new = head.grow(2)
    after = head(x)  # (B, 5)
    assert after.shape == (5, 5) and head.num_labels == 5
    assert torch.equal(after[:, :3], before)
    assert torch.equal(after[:, 3:], torch.zeros(5, 2))  # zero-init: logit 0 until trained
    assert [tuple(p.shape) for p in new] == [(2, 16), (2,)]
    assert new[0] is head.weights[1] and new[1] is head.biases[1]


def test_empty_head_gives_zero_columns():
    assert GrowingHead(4)(torch.ones(3, 4)).shape == (3, 0)
    with pytest.raises(ValueError, match="^k"):
        GrowingHead(4).grow(0)


def test_merged_round_trip():
    torch.manual_seed(1)
    head = GrowingHead(8)
    for k in (2, 1, 3):
        head.grow(k)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_()
    weight, bias = head.weight, head.bias
    assert weight.shape == (6, 8) and bias.shape == (6,) and not weight.requires_grad
    rebuilt = GrowingHead.from_merged(weight, bias)
    assert len(rebuilt.weights) == 1 and rebuilt.num_labels == 6
    x = torch.randn(4, 8)
    torch.testing.assert_close(rebuilt(x), head(x), rtol=1e-6, atol=1e-6)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="^device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device"):
            resolve_device("cuda:0")


def test_head_keys_are_valid_module_names_and_distinct():
    names = ["feedback.intents", "feedback%2Eintents", "update", "keys", "a"]
    keys = [head_key(n) for n in names]
    assert len(set(keys)) == len(keys)
    assert all("." not in k for k in keys)


def test_sub_batches_are_padded_as_the_tokenizer_pads_them(tiny_model_dir):
    """TextClassifier pads its sorted sub-batches itself (no tokenizer.pad per sub-batch):
    the same ids, token types and mask as the tokenizer's padding; a tokenizer that pads on
    the left keeps its own padding."""
    from learner.model import TextClassifier, _right_padded

    model = TextClassifier(tiny_model_dir, max_length=16)
    texts = ["short", "a somewhat longer text than that", "", "x " * 40]
    enc = model.tokenizer(texts, truncation=True, max_length=16)
    rows = [3, 0, 1]
    pad = model._pad_values(enc.keys())
    assert pad is not None and set(pad) == set(enc.keys())
    ours = _right_padded(enc, rows, pad)
    theirs = model.tokenizer.pad({k: [enc[k][i] for i in rows] for k in enc.keys()},
                                 return_tensors="pt")
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    model.tokenizer.padding_side = "left"
    assert model._pad_values(enc.keys()) is None
    padded = []
    real_pad = model.tokenizer.pad

    def pad_spy(*args, **kwargs):
        padded.append(1)
        return real_pad(*args, **kwargs)

    model.tokenizer.pad = pad_spy
    with torch.inference_mode():
        assert model.encode(texts * 3).shape == (12, model.hidden_size)
    assert len(padded) == 2   # 12 texts: two sub-batches, each padded by the tokenizer
