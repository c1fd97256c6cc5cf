import pytest

from learner.distill import DistillConfig, Sample, distill, load_student, make_student, save_student


@pytest.fixture
def teacher(tiny_learner):
    learner = tiny_learner()
    texts = ["card stolen", "card lost", "rate of euro", "exchange rate"] * 4
    labels = ["lost", "lost", "rate", "rate"] * 4
    learner.learn_many("feedback", texts, labels)
    learner.learn_many("market", ["profit up", "loss widens"], ["positive", "negative"])
    return learner


def test_student_is_cut_from_the_teacher_and_distils(teacher, tmp_path):
    student = make_student(teacher, tmp_path, layers=1)
    assert student.model.encoder.config.num_hidden_layers == 1
    assert student.labels("feedback") == teacher.labels("feedback")
    assert student.model_version == teacher.model_version
    samples = [Sample("feedback", t, None) for t in ["card stolen", "exchange rate", "lost card"]]
    samples += [Sample("market", "profit up", "positive")]
    stats = distill(teacher, student, samples, DistillConfig(layers=1, epochs=2, batch_size=2))
    assert stats["samples"] == 4 and stats["steps"] > 0


def test_saved_student_loads_and_predicts_like_the_student(teacher, tmp_path):
    student = make_student(teacher, tmp_path, layers=1)
    assert load_student(tmp_path, teacher.config) is None      # nothing saved yet
    save_student(student, tmp_path, teacher_version=teacher.model_version)
    loaded = load_student(tmp_path, teacher.config)
    texts = ["card stolen", "exchange rate"]
    assert [p.label for p in loaded.predict_many("feedback", texts)] == \
        [p.label for p in student.predict_many("feedback", texts)]


def test_config_and_layer_validation(teacher, tmp_path):
    with pytest.raises(ValueError, match="layers"):
        DistillConfig(layers=0)
    with pytest.raises(ValueError, match="layers must be in"):
        make_student(teacher, tmp_path, layers=9)


def test_student_from_a_lora_teacher_starts_where_the_teacher_is(tiny_learner, tmp_path):
    teacher = tiny_learner(mode="lora", lora_rank=4)
    texts = ["card stolen", "card lost", "rate of euro", "exchange rate"] * 4
    for _ in range(3):
        teacher.learn_many("feedback", texts, ["lost", "lost", "rate", "rate"] * 4)
    layers = teacher.model.encoder.config.num_hidden_layers
    student = make_student(teacher, tmp_path, layers=layers)   # all layers: same function
    t = [p.confidence for p in teacher.predict_many("feedback", texts[:4])]
    s = [p.confidence for p in student.predict_many("feedback", texts[:4])]
    assert max(abs(a - b) for a, b in zip(t, s)) < 1e-4
