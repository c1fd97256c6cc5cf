"""bench.delayed_labels on a tiny model and tiny CSVs: nothing lost at any delay, a zero
delay learns exactly what inline labels do, every output written."""

import json

from bench import delayed_labels

from .test_continual import tiny_csvs  # noqa: F401  (fixture)


def test_tiny_delayed_label_run(tiny_model_dir, tiny_csvs, tmp_path):  # noqa: F811
    train, test = tiny_csvs
    out = tmp_path / "out"
    rc = delayed_labels.main(["--train", train, "--test", test, "--label-column", "label",
                              "--tasks", "3", "--model", tiny_model_dir, "--memory", "12",
                              "--batch-size", "8", "--delays", "0,10", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "results.json").read_text())
    inline, late = result["inline"], result["late"]
    assert inline["trained"] == inline["events"] == 48
    assert all(r["lost"] == 0 and r["trained"] == 48 for r in late)
    assert all(r["outcomes"]["joined"] == 48 for r in late)
    assert late[0]["final_avg_acc"] == inline["final_avg_acc"]       # delay 0 == inline
    assert (out / "delayed_labels.png").stat().st_size > 0
    assert "| late | 10 " in (out / "results.md").read_text()
