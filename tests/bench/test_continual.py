"""``streamlearner bench continual`` end to end on a tiny model and tiny CSVs, and its input checks."""

import csv
import json

import pytest

from bench import continual
from bench.perturb import perturb

LABELS = ["card", "topup", "rate", "refund", "pin", "atm"]


def _write(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def tiny_csvs(tmp_path):
    def rows(n):
        return [(f"{LABELS[i % 6]} word{i % 3} please {i}", LABELS[i % 6]) for i in range(n)]

    return _write(tmp_path / "train.csv", rows(48)), _write(tmp_path / "test.csv", rows(18))


def test_class_incremental_run_writes_every_output(tiny_model_dir, tiny_csvs, tmp_path):
    train, test = tiny_csvs
    out = tmp_path / "out"
    rc = continual.main(["--train", train, "--test", test, "--tasks", "3", "--strategy", "naive,er,derpp+ewc,joint",
                         "--model", tiny_model_dir, "--memory-per-class", "2", "--joint-epochs", "1",
                         "--perturb-rate", "0.2", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    for key in ("scenario", "tasks", "memory_per_class", "mode", "backbone", "device", "best", "results"):
        assert key in report
    assert report["memory_per_class"] == 2 and report["mode"] == "head" and len(report["tasks"]) == 3
    assert set(report["results"]) == {"naive", "er", "derpp+ewc", "joint"}
    assert report["best"] in ("er", "derpp+ewc")
    for r in report["results"].values():
        for key in ("final_avg_acc", "avg_forgetting", "bwt", "acc_matrix", "wall_seconds", "samples_per_second"):
            assert key in r
        assert 0.0 <= r["final_avg_acc"] <= 1.0 and 0.0 <= r["robust_avg_acc"] <= 1.0
    assert len(report["results"]["er"]["acc_matrix"]) == 3
    for name in ("accuracy.png", "average_accuracy.png", "results.md"):
        assert (out / name).stat().st_size > 0


def test_domain_run_reports_per_task(tiny_model_dir, tmp_path):
    a = [(f"card thing {i}", ["card", "pin"][i % 2]) for i in range(12)]
    b = [(f"shares moved {i}", ["positive", "negative"][i % 2]) for i in range(12)]
    args = ["--scenario", "domain", "--train", f"{_write(tmp_path / 'a.csv', a)},{_write(tmp_path / 'b.csv', b)}",
            "--test", f"{tmp_path / 'a.csv'},{tmp_path / 'b.csv'}", "--task-names", "feedback,market",
            "--strategy", "er", "--mode", "full", "--model", tiny_model_dir, "--out", str(tmp_path / "d")]
    assert continual.main(args) == 0
    r = json.loads((tmp_path / "d" / "results.json").read_text())["results"]["er"]
    assert set(r["final_acc_per_task"]) == set(r["acc_after_own_task"]) == {"feedback", "market"}


@pytest.mark.parametrize("case, message", [
    ("missing_column", "missing column"),
    ("empty", "no rows"),
    ("too_many_tasks", "more than the 6 labels"),
    ("unseen_test_label", "never seen in training"),
    ("small_memory", "smaller than the 6 classes"),
])
def test_bad_input_fails_before_training(tmp_path, tiny_csvs, capsys, case, message):
    train, test = tiny_csvs
    args = ["--train", train, "--test", test, "--tasks", "2", "--model", "/nonexistent", "--out", str(tmp_path / "o")]
    if case == "missing_column":
        args[1] = _write(tmp_path / "bad.csv", [("x", "card")], header=("sentence", "label"))
    elif case == "empty":
        args[1] = _write(tmp_path / "empty.csv", [])
    elif case == "too_many_tasks":
        args[5] = "7"
    elif case == "unseen_test_label":
        args[3] = _write(tmp_path / "t.csv", [("x", "mystery")])
    elif case == "small_memory":
        args += ["--memory", "5"]
    assert continual.main(args) == 2  # the model path is never touched: no training started
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_perturbation_is_seeded_and_rate_zero_is_identity():
    text = "please block my card right now"
    assert perturb(text, rate=0.2, seed=3) == perturb(text, rate=0.2, seed=3)
    assert perturb(text, rate=0.0, seed=3) == text
    assert perturb(text, rate=0.5, seed=3) != text
