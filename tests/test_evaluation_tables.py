"""Tests of lib.evaluation_tables: the summary, the pick distribution, the OOD matrix, faithfulness and summary.json."""

from __future__ import annotations

import json
import math

from lib.evaluation import items_frame
from lib.evaluation_tables import faithfulness_table, ood_matrix, pick_distribution, summary_table, write_summary
from tests.test_evaluation import item


def test_pick_distribution_and_norm_accuracy():
    rows = [item("r", "FT", "csqa", f"i{k}", 0, gold=g, loglik_pred=0, loglik_correct=int(g == 0), loglik_norm_pred=p,
                 loglik_norm_correct=int(p == g)) for k, (g, p) in enumerate([(0, 0), (1, 1), (2, 0), (1, 2)])]
    rows.append(item("r", "FT", "csqa", "unscored", 0, gold=2))
    d = pick_distribution(rows, "loglik_pred").set_index("of")
    assert d.loc["loglik_pred", "(a)"] == 1.0 and d.loc["loglik_pred", "max_share"] == 1.0
    assert d.loc["gold", ["(a)", "(b)", "(c)"]].tolist() == [0.25, 0.5, 0.25] and d.loc["gold", "n"] == 4
    norm = pick_distribution(rows).set_index("of")
    assert norm.loc["loglik_norm_pred", ["(a)", "(b)", "(c)"]].tolist() == [0.5, 0.25, 0.25]
    s = summary_table(rows).iloc[0]
    assert s.loglik_accuracy == 0.25 and s.loglik_norm_accuracy == 0.5


def test_ood_matrix_summary_and_faithfulness_tables(tmp_path):
    rows = [item("FT__s", "FT", "csqa", "a", 1), item("FT__s", "FT", "csqa", "b", 0),
            item("FT__s", "FT", "arc", "c", 1),
            item("MT__s", "MT", "csqa", "a", 0, faithfulness_perturbed=1, loglik_pred=0, loglik_correct=1),
            item("MT__s", "MT", "csqa", "b", 0, faithfulness_perturbed=0, faithfulness_counterfactual=1,
                 faithfulness_cf_follows=1),
            item("MT__s", "MT", "arc", "c", 0)]
    m = ood_matrix(rows)
    assert list(m.columns) == ["csqa", "arc"]
    assert m.loc[("FT", "unrevised", "s", 0, "csqa")].tolist() == [50.0, 100.0]
    assert m.loc[("MT", "unrevised", "s", 0, "csqa")].tolist() == [0.0, 0.0]
    s = summary_table(rows)
    mt = s[(s.condition == "MT") & (s.test_set == "csqa")].iloc[0]
    assert mt.n == 2 and mt.answer_change_perturbed == 0.5 and mt.loglik_accuracy == 1.0
    f = faithfulness_table(rows).set_index("run")
    assert f.loc["MT__s", "answer_change_perturbed"] == 0.5 and f.loc["MT__s", "n_counterfactual"] == 1
    assert math.isnan(f.loc["FT__s", "answer_change_perturbed"])
    summary = json.loads(write_summary(tmp_path, rows, []).read_text())
    assert summary["test_sets"] == ["csqa", "arc"] and len(summary["ood_matrix"]) == 2
    assert set(items_frame(rows).columns) >= {"bleu", "rouge_l", "bertscore", "loglik_pred", "loglik_correct",
                                              "faithfulness_perturbed", "faithfulness_counterfactual", "train_set"}


def test_summary_and_ood_matrix_keep_the_rationale_sources_apart():
    rows = [item("MT__unrevised__s", "MT", "csqa", "a", 1, rationale_source="unrevised"),
            item("MT__revised__s", "MT", "csqa", "a", 0, rationale_source="revised"),
            item("MT__revised__s", "MT", "csqa", "b", 0, rationale_source="revised")]
    s = summary_table(rows).set_index("rationale_source")
    assert (s.loc["unrevised", "accuracy"], s.loc["revised", "n"]) == (1.0, 2)
    m = ood_matrix(rows)
    assert m.loc[("MT", "revised", "s", 0, "csqa"), "csqa"] == 0.0 and len(m) == 2
    assert items_frame(rows)["rationale_source"].tolist() == ["unrevised", "revised", "revised"]
