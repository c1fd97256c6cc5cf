"""Serving snapshots and the served models: a snapshot answers like the learner it was
published from (head, lora, full), the student hot swap, and version ordering."""

from __future__ import annotations

import pytest
import torch

from learner.distill import make_student, save_student
from lifecycle.publishing import (ArtifactError, artifact_from_learner, base_model_id,
                                  encode_artifact, read_artifact)
from serving.models import ServedModels
from serving.snapshot import ModelSnapshot, base_classifier

TEXTS = ["card stolen", "card lost", "rate of euro", "exchange rate"]


def _taught(tiny_learner, **kw):
    learner = tiny_learner(**kw)
    for _ in range(3):
        learner.learn_many("feedback", TEXTS * 2, ["lost", "lost", "rate", "rate"] * 2)
    learner.learn_many("market", ["profit up", "loss widens"], ["positive", "negative"])
    return learner


@pytest.fixture
def base(tiny_model_dir):
    return base_classifier(tiny_model_dir, max_length=64, device=torch.device("cpu"))


@pytest.mark.parametrize("kw", [{"mode": "head"}, {"mode": "lora", "lora_rank": 4},
                                {"mode": "full"}], ids=["head", "lora", "full"])
def test_a_snapshot_answers_like_its_learner_through_the_artifact_bytes(tiny_learner, base, kw):
    learner = _taught(tiny_learner, **kw)
    data = encode_artifact(artifact_from_learner(learner))
    import hashlib

    artifact = read_artifact(data, sha256=hashlib.sha256(data).hexdigest())
    snap = ModelSnapshot.from_artifact(artifact, base)
    assert snap.model_version == learner.model_version and snap.mode == learner._mode()
    for task in ("feedback", "market"):
        ours = [(p.label, p.confidence) for p in learner.predict_many(task, TEXTS)]
        theirs = [(p.label, p.confidence) for p in snap.predict_many(task, TEXTS)]
        assert [a for a, _ in ours] == [a for a, _ in theirs]
        assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs)) < 1e-5
    dist = snap.predict_proba("feedback", TEXTS[:1])[0]
    assert set(dist) == {"lost", "rate"} and abs(sum(dist.values()) - 1) < 1e-5
    # The base stays pristine: a later snapshot is not affected by this one.
    assert not len(base.heads) and not any("lora_" in n for n, _ in base.named_parameters())
    assert base_model_id(base) == artifact.base_model


def test_a_bad_artifact_is_refused(tiny_learner):
    data = encode_artifact(artifact_from_learner(_taught(tiny_learner, mode="head")))
    with pytest.raises(ArtifactError) as err:
        read_artifact(data, sha256="0" * 64)
    assert err.value.reason == "checksum"
    with pytest.raises(ArtifactError) as err:
        read_artifact(data[: len(data) // 2])
    assert err.value.reason == "unreadable"


def test_empty_snapshot_answers_no_label(base):
    snap = ModelSnapshot.empty(base, mode="head")
    assert [p.label for p in snap.predict_many("feedback", TEXTS)] == [None] * 4
    assert snap.score("feedback", TEXTS).features.shape == (4, base.hidden_size)


def test_versions_only_move_forward_unless_rolled_back(base):
    models = ServedModels(ModelSnapshot.empty(base, mode="head"))
    assert models.accepts(1, 5, "update") is None
    models.swap(ModelSnapshot.empty(base, mode="head"), sequence=3)
    assert models.accepts(3, 9, "update") == "stale"       # not after the current sequence
    assert models.accepts(2, 9, "update") == "stale"
    assert models.accepts(4, 9, "update") is None
    with pytest.raises(ValueError, match="serve"):
        ServedModels(ModelSnapshot.empty(base, mode="head"), serve="both")


def test_student_hot_swap_and_a_task_born_after_it(tiny_learner, base, tmp_path):
    teacher = _taught(tiny_learner)
    snap = ModelSnapshot.from_artifact(artifact_from_learner(teacher), base)
    models = ServedModels(snap, serve="student", student_dir=tmp_path,
                          learner_config=teacher.config)
    assert models.name == "teacher" and not models.maybe_reload_student()   # nothing saved
    student = make_student(teacher, tmp_path, layers=1)
    save_student(student, tmp_path, teacher_version=teacher.model_version)
    assert models.maybe_reload_student() and models.name == "student"
    assert not models.maybe_reload_student()                              # unchanged
    from serving.snapshot import PerThreadTokenizer
    assert isinstance(models.student.model.tokenizer, PerThreadTokenizer)   # several threads
    assert models.model_for("feedback") is models.student
    teacher.learn_many("news", ["shares fell", "shares rose"], ["down", "up"])
    models.swap(ModelSnapshot.from_artifact(artifact_from_learner(teacher), base))
    assert models.model_for("news") is models.current                      # the teacher knows it
    assert set(models.model_for("news").predict_proba("news", ["shares fell"])[0]) == {"down", "up"}
