"""The data-size curve: one row per size and condition from the runs' own tables, runs of other studies refused."""

from __future__ import annotations

import pandas as pd
import pytest

from lib.data_size import data_size_table, main
from lib.files import write_json
from tests.test_report import PNG_MAGIC

PARAMS = {"run": {"name": "ref", "seed": 0}, "data": {"max_train": 600, "max_test": 500},
          "training": {"conditions": ["BASE", "FT", "MT"], "lr": 0.0003, "seeds": [0]},
          "evaluation": {"faithfulness": True}, "counterfactual": {"votes": 3}}


def fake_run(root, name: str, train: int, accuracy: dict[str, float], **changes) -> object:
    """A finished run folder with the files the curve reads: params, 01_data summary, 06 accuracy table."""
    folder = root / name
    params = {section: dict(block) for section, block in PARAMS.items()}
    params["run"]["name"], params["data"]["max_train"] = name, train
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    write_json(folder / "params.json", params)
    write_json(folder / "01_data" / "summary.json", {"train": train})
    rows = [{"test_set": "csqa", "student": "s", "condition": c, "n": 500, "n_items": 500, "n_seeds": 1,
             "accuracy": a, "ci_low": a - 0.04, "ci_high": a + 0.04, "loglik_norm_accuracy": a, "parse_rate": 0.9,
             "cloze_norm_accuracy": a + 0.2, "cloze_norm_accuracy_ci_low": a + 0.16,
             "cloze_norm_accuracy_ci_high": a + 0.24} for c, a in accuracy.items()]
    rows.append({**rows[0], "condition": "TEACHER", "student": "PaLM", "accuracy": 0.8})
    (folder / "06_statistics").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "06_statistics" / "accuracy.csv", index=False)
    return folder


def test_the_curve_has_a_row_per_size_and_condition_and_leaves_the_teacher_out(tmp_path):
    small = fake_run(tmp_path, "ref-600", 600, {"BASE": 0.2, "FT": 0.25, "MT": 0.3})
    large = fake_run(tmp_path, "ref-2400", 2400, {"BASE": 0.2, "FT": 0.33, "MT": 0.36},
                     training__conditions=["BASE", "FT", "FT-CoT", "MT", "CFD"], counterfactual__votes=5)
    curve = data_size_table([large, small])
    assert set(curve["condition"]) == {"BASE", "FT", "MT"}
    ft = curve[curve["condition"] == "FT"]
    assert ft["train_questions"].tolist() == [600, 2400] and ft["accuracy"].tolist() == [0.25, 0.33]
    assert ft["run"].tolist() == ["ref-600", "ref-2400"]


def test_runs_that_differ_in_more_than_the_training_set_size_are_refused_naming_the_key(tmp_path):
    small = fake_run(tmp_path, "ref-600", 600, {"FT": 0.25})
    other = fake_run(tmp_path, "ref-2400", 2400, {"FT": 0.33}, training__lr=0.001)
    with pytest.raises(ValueError, match=r"training\.lr"):
        data_size_table([small, other])


def test_two_runs_of_one_size_are_refused(tmp_path):
    a = fake_run(tmp_path, "a", 600, {"FT": 0.25})
    b = fake_run(tmp_path, "b", 600, {"FT": 0.27})
    with pytest.raises(ValueError, match="same number of questions"):
        data_size_table([a, b])


def test_the_command_writes_the_table_and_the_figure(tmp_path, capsys):
    runs = [fake_run(tmp_path, f"ref-{n}", n, {"BASE": 0.2, "FT": 0.2 + n / 20000}) for n in (600, 2400, 9741)]
    assert main([str(tmp_path / "out"), *map(str, runs)]) == 0
    table = pd.read_csv(tmp_path / "out" / "data_size.csv")
    assert len(table) == 6 and table["train_questions"].max() == 9741
    assert (tmp_path / "out" / "data_size.png").read_bytes().startswith(PNG_MAGIC)


def test_the_curve_carries_the_standard_readings_and_points_may_pool_other_seeds(tmp_path):
    """Every reading of the measurement: lm-eval's cloze beside the generated answer, with its interval and the parse
    rate; a point of three seeds and one of a single seed, with or without the faithfulness probe, are one curve."""
    small = fake_run(tmp_path, "ref-600", 600, {"BASE": 0.2, "FT": 0.25}, training__seeds=[0],
                     evaluation__faithfulness=False)
    large = fake_run(tmp_path, "ref-2400", 2400, {"BASE": 0.2, "FT": 0.33}, training__seeds=[0, 1, 2])
    ft = data_size_table([small, large]).query("condition == 'FT'")
    assert ft["cloze_norm_accuracy"].round(2).tolist() == [0.45, 0.53]
    assert ft["cloze_norm_accuracy_ci_low"].round(2).tolist() == [0.41, 0.49] and set(ft["parse_rate"]) == {0.9}
    assert ft["cloze_accuracy"].isna().all()  # a reading the runs did not record stays empty, not invented


def test_the_figure_has_a_row_of_panels_per_reading_the_curve_has(tmp_path):
    from lib.figures import plot_data_size

    runs = [fake_run(tmp_path, f"ref-{n}", n, {"BASE": 0.2, "FT": 0.2 + n / 20000}) for n in (600, 2400)]
    curve = data_size_table(runs)
    titles = [ax.get_title() for ax in plot_data_size(curve).axes]
    assert titles == ["csqa: generated answer", "csqa: lm-eval cloze acc_norm"]
    assert [ax.get_title() for ax in plot_data_size(curve.drop(columns="cloze_norm_accuracy")).axes] == [
        "csqa: generated answer"]
