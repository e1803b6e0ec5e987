"""The teacher comparison: one row per teacher and reading from the folders' items, McNemar between teachers on the
same items, folders of other studies or of one teacher refused."""

from __future__ import annotations

import pandas as pd
import pytest

from lib.files import write_json, write_jsonl
from lib.teacher_comparison import BASE_TEACHER, comparison_items, main, teacher_table, teacher_tests, TEACHERS
from tests.test_report import PNG_MAGIC

PARAMS = {"run": {"name": "ref", "seed": 0}, "data": {"max_train": 600, "max_test": 10},
          "teacher": {"backend": "replay", "replay_source": "palm", "replay_dir": "data/palm"},
          "training": {"conditions": ["BASE", "MT"], "lr": 0.0003, "seeds": [0]}, "counterfactual": {"votes": 3}}
N_ITEMS = 10


def item_rows(condition: str, right: set[int], seed: int = 0, cloze_right: set[int] | None = None,
              unparseable: set[int] = frozenset()) -> list[dict]:
    """One run's items on csqa: `correct` 1 on the items in `right`, `cloze_norm_correct` on `cloze_right`."""
    cloze_right = right if cloze_right is None else cloze_right
    return [{"run": f"{condition}__unrevised__s__seed{seed}", "condition": condition, "rationale_source": "unrevised",
             "student": "s", "seed": seed, "test_set": "csqa", "item_id": f"q{i}", "correct": int(i in right),
             "cloze_norm_correct": int(i in cloze_right), "unparseable": int(i in unparseable), "rationale_len": 5,
             "cec": 0.5} for i in range(N_ITEMS)]


def fake_run(root, source: str, rows: list[dict], **changes) -> object:
    """A run folder of one replayed teacher: params.json and 05_evaluation/items.jsonl."""
    folder = root / source
    params = {section: dict(block) for section, block in PARAMS.items()}
    params["run"]["name"], params["teacher"]["replay_source"] = f"ref-{source}", source
    params["teacher"]["replay_dir"] = f"data/{source}"
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params[section][key] = value
    write_json(folder / "params.json", params)
    write_jsonl(folder / "05_evaluation" / "items.jsonl", rows)
    return folder


def three_teachers(tmp_path, seeds: tuple[int, ...] = (0,)) -> list:
    """PaLM right on items 0-6, Hendriks on 0-4, CoS-E on 5-9 (every seed); BASE right on items 0-1."""
    base = item_rows("BASE", {0, 1})
    right = {"palm": set(range(7)), "hendriks": set(range(5)), "cose": set(range(5, 10))}
    return [fake_run(tmp_path, source, (base if source == "palm" else [])
                     + [r for seed in seeds for r in item_rows("MT", items, seed, cloze_right=items - {0})],
                     training__seeds=list(seeds))
            for source, items in right.items()]


def test_a_row_per_teacher_and_reading_with_its_accuracy_and_parse_rate(tmp_path):
    folders = three_teachers(tmp_path)
    rows = item_rows("MT", {1, 2}, unparseable={8, 9})
    folders[2] = fake_run(tmp_path, "cose", rows, counterfactual__votes=5, teacher__revise_max_questions=3)
    table = teacher_table(comparison_items(folders), n_boot=200)
    assert len(table) == 4 * 2  # (BASE + three teachers) x (correct, cloze_norm_correct)
    accuracy = table.set_index(["teacher", "reading"])["accuracy"]
    assert accuracy[(TEACHERS["palm"], "correct")] == 0.7 and accuracy[(TEACHERS["palm"], "cloze_norm_correct")] == 0.6
    assert accuracy[(TEACHERS["hendriks"], "correct")] == 0.5 and accuracy[(TEACHERS["cose"], "correct")] == 0.2
    assert accuracy[(BASE_TEACHER, "correct")] == 0.2
    parse = table.set_index(["teacher", "reading"])["parse_rate"]
    assert parse[(TEACHERS["cose"], "correct")] == 0.8 and parse[(TEACHERS["palm"], "correct")] == 1.0
    assert (table["ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["ci_high"]).all()
    assert set(table.loc[table["teacher"] == BASE_TEACHER, "condition"]) == {"BASE"}


def test_folders_that_differ_in_more_than_the_teacher_are_refused_naming_the_key(tmp_path):
    palm = fake_run(tmp_path, "palm", item_rows("BASE", {0}) + item_rows("MT", {1}))
    cose = fake_run(tmp_path, "cose", item_rows("MT", {2}), training__lr=0.001)
    with pytest.raises(ValueError, match=r"training\.lr .*teacher\.replay_source"):
        comparison_items([palm, cose])


def test_two_folders_of_one_teacher_are_refused(tmp_path):
    a = fake_run(tmp_path, "palm", item_rows("BASE", {0}) + item_rows("MT", {1}))
    b = fake_run(tmp_path / "again", "palm", item_rows("MT", {2}))
    with pytest.raises(ValueError, match="same teacher.*one folder per teacher"):
        comparison_items([a, b])


def test_a_folder_without_the_condition_is_refused_saying_what_it_has(tmp_path):
    palm = fake_run(tmp_path, "palm", item_rows("BASE", {0}) + item_rows("MT", {1}))
    with pytest.raises(ValueError, match=r"no items of condition FT .*MT \(unrevised\)"):
        comparison_items([palm], condition="FT")


def test_mcnemar_counts_the_items_only_one_teacher_got_right_with_base_beside_every_seed(tmp_path):
    tests = teacher_tests(comparison_items(three_teachers(tmp_path, seeds=(0, 1))))
    correct = tests[tests["reading"] == "correct"]
    assert len(correct) == 6 * 2  # the pairs of four groups, in each seed (BASE's one run beside both)
    pair = correct[(correct["group1"] == TEACHERS["cose"]) & (correct["group2"] == TEACHERS["palm"])
                   & (correct["seed"] == 1)].iloc[0]
    assert (pair["only1"], pair["only2"], pair["both_right"], pair["both_wrong"]) == (3, 5, 2, 0)
    base = correct[(correct["group1"] == TEACHERS["palm"]) & (correct["group2"] == BASE_TEACHER)]
    assert base["seed"].tolist() == [0, 1] and base["only1"].tolist() == [5, 5] and base["only2"].tolist() == [0, 0]
    assert (tests["p_holm"] >= tests["p"]).all() and tests["method"].eq("exact binomial").all()


def test_the_command_writes_the_tables_and_the_figure(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(out), *map(str, three_teachers(tmp_path))]) == 0
    table = pd.read_csv(out / "teachers.csv")
    assert len(table) == 8 and set(table["teacher"]) == {BASE_TEACHER, *TEACHERS.values()}
    assert len(pd.read_csv(out / "teacher_tests.csv")) == 6 * 2
    assert (out / "teachers.png").read_bytes().startswith(PNG_MAGIC)
    assert "CoS-E (human)" in capsys.readouterr().out


def test_the_figure_draws_a_bar_per_teacher_and_base_as_a_dashed_line(tmp_path):
    from matplotlib.container import ErrorbarContainer

    from lib.figures import plot_teachers

    table = teacher_table(comparison_items(three_teachers(tmp_path)), n_boot=100)
    ax = plot_teachers(table).axes[0]
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 3
    assert [line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [20.0]
    with pytest.raises(ValueError, match="no rows of reading 'lettered_correct'"):
        plot_teachers(table, reading="lettered_correct")
