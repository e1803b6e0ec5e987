"""Params validation: typos, types, missing files and condition names are caught with their place."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib.files import PROJECT_ROOT
from lib.params import key_lines, load_params, ParamsError

QUICKSTART = PROJECT_ROOT / "params" / "quickstart.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


BASE = """\
data:
  train: {name: s, format: commonsenseqa, source: data/sample/commonsenseqa_sample.jsonl}
"""


@pytest.mark.parametrize("name", ["quickstart.yaml", "smoke.yaml"])
def test_shipped_params_are_valid(name):
    params = load_params(PROJECT_ROOT / "params" / name)
    assert params.data.train.format == "commonsenseqa"


def test_misspelt_key_names_file_line_and_suggestion(tmp_path):
    path = write(tmp_path, BASE + "teacher:\n  backend: local\n  max_new_token: 32\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert f"{path}:5" in msg
    assert "teacher.max_new_token" in msg and "did you mean 'max_new_tokens'" in msg


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ParamsError, match="unknown key 'trainig'; did you mean 'training'"):
        load_params(write(tmp_path, BASE + "trainig: {}\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ParamsError, match=r"'training.batch_size'.*'four'"):
        load_params(write(tmp_path, BASE + "training: {batch_size: four}\n"))


def test_missing_data_file(tmp_path):
    text = BASE.replace("data/sample/commonsenseqa_sample.jsonl", "data/nowhere.jsonl")
    with pytest.raises(ParamsError, match="file not found: data/nowhere.jsonl"):
        load_params(write(tmp_path, text))


def test_unknown_condition_suggests_close_match(tmp_path):
    with pytest.raises(ParamsError, match="unknown condition 'FT-COT'; did you mean 'FT-CoT'"):
        load_params(write(tmp_path, BASE + "training: {conditions: [FT-COT]}\n"))


def test_every_method_condition_is_accepted_and_a_typo_is_refused(tmp_path):
    # CF, MT+CF and CAUSAL have training formats now (lib/training.py); their data comes from steps 02-03
    params = load_params(write(tmp_path, BASE + "training: {conditions: [CF, MT+CF, CAUSAL]}\n"))
    assert params.training.conditions == ["CF", "MT+CF", "CAUSAL"]
    with pytest.raises(ParamsError, match="did you mean 'CFD'"):
        load_params(write(tmp_path, BASE + "training: {conditions: [CFDD]}\n"))


def test_replay_backend_needs_a_folder(tmp_path):
    with pytest.raises(ParamsError, match="replay_dir"):
        load_params(write(tmp_path, BASE + "teacher: {backend: replay}\n"))


def test_a_replay_folder_without_its_sources_files_is_refused_before_any_step(tmp_path):
    (tmp_path / "cos_e" / "v1.11").mkdir(parents=True)
    (tmp_path / "cos_e" / "v1.11" / "cose_train_v1.11.jsonl").write_text("")
    (tmp_path / "cos_e" / "v1.11" / "cose_dev_v1.11.jsonl").write_text("")
    wrong = f"teacher: {{backend: replay, replay_source: cose, replay_dir: {tmp_path / 'cos_e'}}}\n"  # one level up
    with pytest.raises(ParamsError, match=r"lacks cose_train_v1.11.jsonl, cose_dev_v1.11.jsonl.*v1.11"):
        load_params(write(tmp_path, BASE + wrong))
    right = f"teacher: {{backend: replay, replay_source: cose, replay_dir: {tmp_path / 'cos_e' / 'v1.11'}}}\n"
    assert load_params(write(tmp_path, BASE + right)).teacher.replay_source == "cose"


def test_overrides_apply_and_are_named_in_errors():
    params = load_params(QUICKSTART, ["teacher.max_new_tokens=12", "training.conditions=[FT, MT]"])
    assert params.teacher.max_new_tokens == 12 and params.training.conditions == ["FT", "MT"]
    with pytest.raises(ParamsError, match=r"--set teacher.max_new_tokns: unknown key"):
        load_params(QUICKSTART, ["teacher.max_new_tokns=12"])
    with pytest.raises(ParamsError, match="expected section.key=value"):
        load_params(QUICKSTART, ["teacher.max_new_tokens"])


def test_key_lines_maps_nested_keys():
    lines = key_lines("a:\n  b: 1\n  c:\n    d: 2\n")
    assert lines == {"a": 1, "a.b": 2, "a.c": 3, "a.c.d": 4}


def test_cli_rejects_typo_before_loading_any_model(tmp_path):
    bad = yaml.safe_load(QUICKSTART.read_text())
    bad["evaluation"]["embeder"] = bad["evaluation"].pop("embedder")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    # Validation must not import torch or transformers: that is what keeps it to a fraction of a second.
    probe = (f"import sys; from lib.study import main; rc = main([{str(path)!r}]); "
             "heavy = [m for m in ('torch', 'transformers', 'papermill') if m in sys.modules]; "
             "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    assert proc.returncode == 2
    assert "evaluation.embeder" in proc.stderr and "did you mean 'embedder'" in proc.stderr
    assert "HEAVY []" in proc.stdout


def test_a_reference_outside_the_conditions_is_refused_before_any_work():
    smoke = PROJECT_ROOT / "params" / "smoke.yaml"
    assert load_params(smoke, ["statistics.reference=MT"]).statistics.reference == "MT"
    with pytest.raises(ParamsError, match="statistics.reference 'CF' is not one of training.conditions"):
        load_params(smoke, ["statistics.reference=CF", "training.conditions=[FT,MT]"])


def test_base_is_a_condition():
    assert load_params(QUICKSTART, ["training.conditions=[BASE, FT]"]).training.conditions == ["BASE", "FT"]


def test_the_smoke_study_trains_every_condition_on_both_rationale_sources():
    smoke = load_params(PROJECT_ROOT / "params" / "smoke.yaml")
    assert smoke.training.conditions == ["BASE", "FT", "FT-CoT", "MT", "CF", "MT+CF", "CFD", "CAUSAL"]
    assert smoke.training.rationale_sources == ["unrevised", "revised"] and smoke.training.max_steps == 2
    assert smoke.teacher.revise_max_questions >= 2 and smoke.training.rationale_filter == "any"
    assert smoke.counterfactual.cf_rationale_questions is None or smoke.counterfactual.cf_rationale_questions >= 2
    assert load_params(QUICKSTART).training.rationale_sources == ["unrevised"]  # the default: today's behaviour


def test_rationale_sources_are_checked(tmp_path):
    with pytest.raises(ParamsError, match=r"'training.rationale_sources.1'.*'unrevised' or 'revised'.*'revisd'"):
        load_params(write(tmp_path, BASE + "training: {rationale_sources: [unrevised, revisd]}\n"))
    with pytest.raises(ParamsError, match="listed twice"):
        load_params(write(tmp_path, BASE + "training: {rationale_sources: [revised, revised]}\n"))
    with pytest.raises(ParamsError, match="at least one rationale source"):
        load_params(write(tmp_path, BASE + "training: {rationale_sources: []}\n"))


def test_overrides_name_a_trained_condition_of_the_study(tmp_path):
    text = BASE + "training:\n  conditions: [FT, CAUSAL]\n  overrides:\n    NAME: {lr: 2.0e-5}\n"
    path = write(tmp_path, text.replace("NAME", "CASUAL"))
    with pytest.raises(ParamsError, match=rf"{path}:5: 'training.overrides': unknown condition 'CASUAL' in "
                                          r"training.overrides; did you mean 'CAUSAL'\?"):
        load_params(path)
    with pytest.raises(ParamsError, match="training.overrides.MT: MT is not one of training.conditions "
                                          r"\(FT, CAUSAL\); add it there or remove this override"):
        load_params(write(tmp_path, text.replace("NAME", "MT")))
    with pytest.raises(ParamsError, match="BASE is the untrained student"):
        load_params(write(tmp_path, text.replace("[FT, CAUSAL]", "[BASE, FT]").replace("NAME", "BASE")))
    bad_value = BASE + "training:\n  conditions: [FT, CAUSAL]\n  overrides:\n    CAUSAL:\n      lr: -1\n"
    with pytest.raises(ParamsError, match=r":7: 'training.overrides.CAUSAL.lr'.*greater than 0"):
        load_params(write(tmp_path, bad_value))
    with pytest.raises(ParamsError, match="unknown key 'training.overrides.CAUSAL.students'"):
        load_params(write(tmp_path, text.replace("NAME", "CAUSAL").replace("{lr: 2.0e-5}", "{students: [x]}")))


def test_an_override_applies_to_its_condition_only():
    p = load_params(QUICKSTART, ["training.conditions=[MT, CAUSAL]", "training.lora={r: 8, alpha: 32}",
                                 "training.overrides={CAUSAL: {finetune: qlora, epochs: 10, lr: 2.0e-5, batch_size: 8, "
                                 "lora: {r: 16}, max_steps: null}}"]).training
    causal = p.for_condition("CAUSAL")
    assert (causal.finetune, causal.epochs, causal.lr, causal.batch_size) == ("qlora", 10, 2e-5, 8)
    assert (causal.lora.r, causal.lora.alpha, causal.max_steps) == (16, 32, p.max_steps)  # unnamed keys stay
    assert p.for_condition("MT") == p and p.for_condition("MT").finetune == "lora"


def test_the_quickstart_documents_the_causal_papers_settings():
    lines = QUICKSTART.read_text().splitlines()
    example = [line.strip().removeprefix("#").strip() for line in lines if line.strip().startswith("#   CAUSAL:")]
    assert example, "params/quickstart.yaml shows the causal paper's CAUSAL settings as a commented override"
    override = yaml.safe_load(example[0])["CAUSAL"]
    assert override == {"finetune": "qlora", "epochs": 10, "lr": 2e-5, "batch_size": 8}
    p = load_params(QUICKSTART, {"training.conditions": ["CAUSAL"], "training.overrides": {"CAUSAL": override}})
    assert p.training.for_condition("CAUSAL").lr == 2e-5
