"""The larger-model path of issue #14: any local transformers encoder, in every mode.

Tiny random BERT, RoBERTa, MPNet and DeBERTa-v2 encoders (the bundled MiniLM tokenizer, no
dropout) learn in head, lora and full mode, LoRA lands on each family's own attention
projections, a checkpoint round-trips, and gradient checkpointing and ``torch.compile`` change
what is computed by nothing (gradient checkpointing) or keep the checkpoint names (compile).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from learner import Learner, LearnerConfig
from learner.model import TextClassifier, attention_projections

SMALL = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
             vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {
    "bert": ("BertConfig", dict(max_position_embeddings=128), ["query", "key", "value"]),
    "roberta": ("RobertaConfig", dict(max_position_embeddings=130, pad_token_id=0),
                ["query", "key", "value"]),
    "mpnet": ("MPNetConfig", dict(max_position_embeddings=130, pad_token_id=0), ["q", "k", "v"]),
    "deberta-v2": ("DebertaV2Config", dict(max_position_embeddings=128, pad_token_id=0),
                   ["query_proj", "key_proj", "value_proj"]),
}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, str]:
    import transformers
    from transformers import AutoModel

    from learner.model import default_model_path

    out = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for family, (config_class, extra, _) in FAMILIES.items():
            path = tmp_path_factory.mktemp(family)
            AutoModel.from_config(getattr(transformers, config_class)(**SMALL, **extra)).save_pretrained(path)
            for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                         "special_tokens_map.json"):
                shutil.copy(Path(default_model_path()) / name, path / name)
            out[family] = str(path)
    return out


BATCHES = [(["my card has not arrived", "what is the exchange rate"], ["card", "rate"]),
           (["the card is still missing", "how much is a dollar"], ["card", "rate"])]


def learn(learner: Learner) -> list[float]:
    return [learner.learn_many("t", texts, labels).loss for texts, labels in BATCHES]


# BERT in every mode is what the rest of tests/learner runs on.
@pytest.mark.parametrize("family", ["roberta", "mpnet", "deberta-v2"])
def test_every_family_in_every_mode(encoders, family):
    targets = FAMILIES[family][2]
    for mode in ("head", "lora", "full"):
        learner = Learner(LearnerConfig(model=encoders[family], device="cpu", mode=mode,
                                        lora_rank=2))
        losses = learn(learner)
        assert learner.model_version == 2 and all(torch.isfinite(torch.tensor(losses))), (mode, losses)
        assert learner.predict_many("t", ["my card"])[0].label in {"card", "rate"}
        adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in learner.state_dict() if "lora_A" in n}
        assert adapted == (set(targets) if mode == "lora" else set()), (mode, adapted)
        if mode != "lora":
            continue
        # The adapters' names are the family's: a checkpoint of them loads into a fresh learner.
        fresh = Learner(LearnerConfig(model=encoders[family], device="cpu", mode=mode, lora_rank=2))
        fresh.load(learner.state_dict(), learner.metadata(), learner.replay.state_dict())
        a = learner.predict_many("t", ["the exchange rate today"])[0]
        b = fresh.predict_many("t", ["the exchange rate today"])[0]
        assert a.label == b.label and abs(a.confidence - b.confidence) < 1e-6


@pytest.mark.parametrize("family", ["bert", "mpnet"])   # transformers' own / the per-layer wrapper
def test_gradient_checkpointing_computes_the_same(encoders, family):
    runs = {}
    for checkpointing in (False, True):
        learner = Learner(LearnerConfig(model=encoders[family], device="cpu", mode="full",
                                        gradient_checkpointing=checkpointing))
        runs[checkpointing] = (learn(learner), learner.state_dict())
    assert runs[False][0] == pytest.approx(runs[True][0], abs=1e-6)
    for name, tensor in runs[False][1].items():
        assert torch.allclose(tensor, runs[True][1][name], atol=1e-6), name


def test_lora_targets_are_found_by_name():
    from transformers import DistilBertConfig, DistilBertModel

    model = DistilBertModel(DistilBertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=8, vocab_size=10))
    assert attention_projections(model) == ["q_lin", "k_lin", "v_lin"]
    with pytest.raises(ValueError, match="no attention projections"):
        attention_projections(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_compile_keeps_checkpoint_names(encoders, monkeypatch):
    """LEARNER_COMPILE compiles the encoder in place; what it computes is torch's business (the
    GPU bench runs it: inductor takes minutes on 2 CPU cores), its names are ours."""
    calls = []
    original = TextClassifier.compile_encoder
    monkeypatch.setattr(TextClassifier, "compile_encoder",
                        lambda self, **kw: (calls.append(kw), original(self, backend="eager"))[1])
    plain = Learner(LearnerConfig(model=encoders["bert"], device="cpu", mode="lora"))
    compiled = Learner(LearnerConfig(model=encoders["bert"], device="cpu", mode="lora", compile=True))
    assert calls == [{}] and compiled.model.encoder._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()
