"""The teacher engine against a fake OpenAI-compatible server that injects faults; cache, resume, budget, secrets."""

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.counterfactual import build_cf_rationales, CounterfactualRationale
from lib.examples import condition_examples, revised_rationales
from lib.files import DataError, PROJECT_ROOT
from lib.models import Completion
from lib.openai_api import RateLimiter, retry_after_s
from lib.params import CounterfactualParams, load_params, ParamsError, TeacherParams
from lib.prompts import causal_prompt, causal_student_prompt, claim_evidence_text, cot_prompt, load_template, TEMPLATES
from lib.questions import ClaimEvidence, MCQuestion
from lib.recorded import hendriks_empty_counts, load_hendriks, match_hendriks
from lib.response_cache import request_key, ResponseCache
from lib.teacher import (
    causal_explanations,
    causal_failure,
    cot_rationales,
    critique_revisions,
    hendriks_side_by_side,
    make_teacher,
    parse_causal,
    passes_rationale_filter,
    Rationale,
    REPLAY_ONLY,
    Revision,
    split_rationale,
    summarize,
)
from lib.teacher_engine import Answer, Ask, CachedTeacher, LocalBackend
from tests.conftest import SHARED_DATA
from tests.fake_openai_server import FakeOpenAI

SECRET = "sk-test-DO-NOT-WRITE-4f9a1c"
ENV = "DISTILL_TEST_TEACHER_KEY"


@pytest.fixture()
def secret(monkeypatch):
    monkeypatch.setenv(ENV, SECRET)
    return SECRET


def questions(n: int, prefix: str = "Q") -> list[MCQuestion]:
    return [MCQuestion(id=f"{prefix}{i}", question=f"Where is thing {prefix}{i}#?", choices=["box", "sea", "sky"],
                       labels=["A", "B", "C"], answer=0) for i in range(n)]


def params(server: FakeOpenAI, **kw) -> TeacherParams:
    base = dict(backend="openai", base_url=server.url, model="fake-1", api_key_env=ENV, n_shots=1,
                max_new_tokens=32, max_in_flight=4, request_timeout_s=1.0, max_retries=4, backoff_s=0.05)
    return TeacherParams(**{**base, **kw})


@pytest.fixture()
def server():
    fake = FakeOpenAI(key=SECRET, stall_s=2.5).start()
    yield fake
    fake.stop()


def written_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_faults_end_valid_or_recorded_and_a_rerun_makes_no_calls(server, secret, tmp_path):
    server.plan = {"Q0#": ["429", "429", "ok"], "Q1#": ["500", "ok"], "Q2#": ["stall", "ok"],
                   "Q3#": ["malformed", "ok"], "Q4#": ["truncated", "ok"], "Q5#": ["garbage", "garbage"],
                   "Q6#": ["500"] * 10}
    p = params(server, max_retries=3)
    qs = questions(10)
    engine = make_teacher(p, run_dir=tmp_path)
    t0 = time.perf_counter()
    rows = cot_rationales({"train": qs}, p, engine=engine)
    engine.close()
    by_id = {r.id: r for r in rows}
    assert len(rows) == 10
    assert all((r.failure is None and r.answer == 0) or r.failure for r in rows)
    assert by_id["Q0"].failure is None and by_id["Q1"].failure is None and by_id["Q2"].failure is None
    assert by_id["Q3"].failure is None
    assert by_id["Q4"].failure is None and by_id["Q4"].responses == 2  # truncated, then re-asked
    assert by_id["Q5"].failure == "unparseable" and by_id["Q5"].responses == 2
    assert by_id["Q6"].failure.startswith("request failed after 4 tries: HTTP 500")
    # Retry-After of 0.2 s was honoured twice for Q0
    q0 = [r["time"] for r in server.requests if "Q0#" in r["prompt"]]
    assert len(q0) == 3 and q0[1] - q0[0] >= 0.19 and q0[2] - q0[1] >= 0.19
    assert time.perf_counter() - t0 < 20
    reasks = [r for r in server.requests if "Q4#" in r["prompt"]]
    assert reasks[-1]["temperature"] == p.reask_temperature

    sent = len(server.requests)
    engine = make_teacher(p, run_dir=tmp_path)
    again = cot_rationales({"train": qs}, p, engine=engine)
    engine.close()
    # only the request that never got a response (Q6) is asked again
    assert [r["prompt"] for r in server.requests[sent:]] and all("Q6#" in r["prompt"] for r in server.requests[sent:])
    assert [(r.id, r.rationale, r.failure) for r in again if r.id != "Q6"] == \
           [(r.id, r.rationale, r.failure) for r in rows if r.id != "Q6"]
    assert not any(SECRET.encode() in f.read_bytes() for f in written_files(tmp_path))


def test_a_second_run_makes_zero_calls(server, secret, tmp_path):
    p = params(server)
    qs = questions(6)
    for _ in range(2):
        engine = make_teacher(p, run_dir=tmp_path)
        cot_rationales({"train": qs}, p, engine=engine)
        engine.close()
    assert len(server.requests) == 6


KILL_SCRIPT = """
import sys
from lib.params import TeacherParams
from lib.teacher import cot_rationales, make_teacher
from tests.test_teacher import questions
p = TeacherParams(backend="openai", base_url=sys.argv[1], model="fake-1", api_key_env="{env}", n_shots=1,
                  max_new_tokens=32, max_in_flight=4, request_timeout_s=5)
engine = make_teacher(p, run_dir=sys.argv[2])
cot_rationales({{"train": questions(60)}}, p, engine=engine)
engine.close()
"""


def stored_prompts(cache: Path) -> set[str]:
    db = sqlite3.connect(str(cache))
    try:
        return {json.loads(r)["messages"][0]["content"] for (r,) in db.execute("SELECT request FROM responses")}
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()


def test_kill_9_mid_run_then_restart_resends_nothing_stored(server, secret, tmp_path):
    server.latency_s = 0.1
    script = KILL_SCRIPT.format(env=ENV)
    cache = tmp_path / "teacher_cache.sqlite"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, server.url, str(tmp_path)], cwd=PROJECT_ROOT, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and len(stored_prompts(cache)) < 12:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = stored_prompts(cache)
    assert 12 <= len(stored) < 60, "the kill must land mid-run"
    before = len(server.requests)
    subprocess.run([sys.executable, "-c", script, server.url, str(tmp_path)], cwd=PROJECT_ROOT, env=env, check=True)
    resent = {r["prompt"] for r in server.requests[before:]}
    assert not resent & stored
    assert len(stored_prompts(cache)) == 60
    assert not any(SECRET.encode() in f.read_bytes() for f in written_files(tmp_path))


def test_budget_stops_cleanly_before_it_is_passed(server, secret, tmp_path):
    p = params(server, max_requests=3, max_in_flight=1)
    rows = cot_rationales({"train": questions(5)}, p, engine=make_teacher(p, run_dir=tmp_path))
    assert len(server.requests) == 3
    assert [r.failure for r in rows][3:] == ["budget: teacher.max_requests=3 reached"] * 2
    # the stored responses count against the run's budget: a rerun with the same budget sends nothing
    cot_rationales({"train": questions(5)}, p, engine=make_teacher(p, run_dir=tmp_path))
    assert len(server.requests) == 3
    # dollars: 1 $/Mtok in and out; each request costs at most (prompt + 32) tokens
    p2 = params(server, max_cost_usd=1e-3, price_input_usd_per_mtok=1.0, price_output_usd_per_mtok=1.0)
    engine = make_teacher(p2, run_dir=tmp_path / "dollars")
    cot_rationales({"train": questions(40, "D")}, p2, engine=engine)
    assert engine.budget.cost <= 1e-3 and 0 < len(server.requests) - 3 < 40


def test_in_flight_is_bounded_and_rate_limits_hold(server, secret, tmp_path):
    server.latency_s = 0.1
    p = params(server, max_in_flight=3)
    make_teacher(p, run_dir=tmp_path).complete([f"prompt {i}" for i in range(12)], desc="bounded")
    assert server.max_in_flight == 3

    import asyncio

    async def times(limiter: RateLimiter, n: int) -> list[float]:
        out = []
        for _ in range(n):
            await limiter.acquire(10)
            out.append(time.monotonic())
        return out

    stamps = asyncio.run(times(RateLimiter(rpm=2, tpm=None, window_s=0.3), 5))
    assert stamps[2] - stamps[0] >= 0.29 and stamps[4] - stamps[2] >= 0.29
    stamps = asyncio.run(times(RateLimiter(rpm=None, tpm=20, window_s=0.3), 3))
    assert stamps[2] - stamps[0] >= 0.29


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "150"}) == 0.15
    assert retry_after_s({}) is None


def test_complete_keeps_the_teacher_protocol_and_caches_samples(server, secret, tmp_path):
    p = params(server)
    engine = make_teacher(p, run_dir=tmp_path)
    outs = engine.complete(["a prompt", "another"], max_new_tokens=16, temperature=0.8, n=3, desc="votes")
    assert [len(o) for o in outs] == [3, 3] and all(isinstance(c, Completion) for o in outs for c in o)
    assert len(server.requests) == 6  # each sample is its own request and its own cache entry
    engine.complete(["a prompt", "another"], max_new_tokens=16, temperature=0.8, n=3, desc="votes")
    assert len(server.requests) == 6


def test_sampled_requests_carry_the_run_seed_in_the_request_and_the_cache_key(server, secret, tmp_path):
    p = params(server)
    make_teacher(p, run_dir=tmp_path, seed=0).complete(["a prompt"], temperature=0.8, n=2, desc="votes")
    seeds = [r["seed"] for r in server.requests]
    assert None not in seeds and len(set(seeds)) == 2  # each sample its own seed
    make_teacher(p, run_dir=tmp_path, seed=1).complete(["a prompt"], temperature=0.8, n=2, desc="votes")
    assert len(server.requests) == 4  # another run seed is another sample, not a cache hit
    assert not {r["seed"] for r in server.requests[2:]} & set(seeds)
    make_teacher(p, run_dir=tmp_path, seed=1).complete(["greedy"], temperature=0.0)
    assert server.requests[-1]["seed"] is None  # greedy requests need no seed


def test_chat_and_completions_endpoints_and_the_batch_api(server, secret, tmp_path):
    p = params(server, endpoint="completions")
    rows = cot_rationales({"train": questions(3)}, p, engine=make_teacher(p, run_dir=tmp_path))
    assert all(r.failure is None for r in rows) and not any(r["chat"] for r in server.requests)
    p = params(server, batch_api=True, batch_poll_s=0.05)
    server.plan = {"B1#": ["garbage"]}
    rows = cot_rationales({"train": questions(3, "B")}, p, engine=make_teacher(p, run_dir=tmp_path / "b"))
    assert [r.failure for r in rows] == [None, None, None]  # B1 was re-asked in a second batch
    assert len(server.batches) == 2
    cot_rationales({"train": questions(3, "B")}, p, engine=make_teacher(p, run_dir=tmp_path / "b"))
    assert len(server.batches) == 2


def test_revisions_and_causal_explanations(server, secret, tmp_path):
    p = params(server, revise_max_questions=2, causal_max_pairs=1)
    engine = make_teacher(p, run_dir=tmp_path)
    revs = critique_revisions(questions(4), p, engine)
    assert len(revs) == 2 and all(r.failure is None and r.initial and r.critique and r.revised for r in revs)
    assert set(revs[0].templates) == {"explain", "critique", "revise"}
    pair = ClaimEvidence(id="c1-0", claim_id="c1", claim="Rain grows.", claim_label="SUPPORTS", evidence="Heat.",
                         evidence_label="SUPPORTS", article="A")
    rows = causal_explanations({"train": [pair, pair], "test": [pair]}, p, engine)
    assert [r.split for r in rows] == ["train", "test"]
    assert rows[0].failure is None and rows[0].explanation.count(".") == 3


def test_causal_validation():
    ok = Completion('{"cause": "a", "mechanism": "b", "effect": "c"}', "stop", 1, 1)
    assert causal_failure(ok) is None and parse_causal(ok.text)[0]["effect"] == "c"
    assert causal_failure(Completion('{"cause": "a"}', "stop", 1, 1)) == "JSON lacks mechanism, effect"
    assert causal_failure(Completion('{"cause": "a", "mech', "length", 1, 1)) == "truncated"
    assert causal_failure(Completion("no json", "stop", 1, 1)) == "no JSON object"


def test_replay_records_generative_tasks_as_failures(tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "cqa_train.json").write_text("[]")
    p = TeacherParams(backend="replay", replay_dir=str(tmp_path))
    revs = critique_revisions(questions(2), p)
    assert [r.failure for r in revs] == [REPLAY_ONLY] * 2


def test_missing_key_says_which_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(RuntimeError, match=ENV):
        make_teacher(TeacherParams(backend="openai", api_key_env=ENV), run_dir=tmp_path)


def test_params_switch_backends_with_set_only():
    quick = PROJECT_ROOT / "params" / "quickstart.yaml"
    p = load_params(quick, ["teacher.backend=openai", "teacher.base_url=http://127.0.0.1:9/v1", "teacher.model=m"])
    assert p.teacher.backend == "openai" and p.teacher.api_key_env == "OPENAI_API_KEY"
    assert load_params(quick).teacher.backend == "local"


def test_local_backend_is_cached_and_not_loaded_on_a_cached_rerun(tmp_path):
    p = TeacherParams(model="tiny-random-gemma3", max_new_tokens=8, n_shots=0, max_reasks=0)
    engine = make_teacher(p, "cpu", tmp_path)
    rows = cot_rationales({"train": questions(3)}, p, engine=engine)
    assert len(ResponseCache(tmp_path / "teacher_cache.sqlite")) == 3
    engine = make_teacher(p, "cpu", tmp_path)
    again = cot_rationales({"train": questions(3)}, p, engine=engine)
    assert engine.backend._loaded is None and [r.raw for r in again] == [r.raw for r in rows]


def test_the_local_teachers_cache_key_holds_its_device(tmp_path):
    """A GPU loads the local model in bf16 (lib.models), so its texts are not the CPU's: the device is in the key."""
    p = TeacherParams(model="tiny-random-gemma3")
    engine = CachedTeacher(LocalBackend(p, "cpu"), ResponseCache(tmp_path / "teacher_cache.sqlite"), p)
    request = engine.request_for(Ask("a prompt", max_new_tokens=8), reask=0)
    assert request["device"] == "cpu"
    assert request_key(request) != request_key({**request, "device": "cuda"})


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "cos_e").exists(),
                    reason="shared CoS-E copy absent")
def test_replay_cose(tmp_path):
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "cos_e" / "v1.11"
    qid = json.loads((folder / "cose_dev_v1.11.jsonl").read_text().splitlines()[0])["id"]
    q = MCQuestion(id=qid, question="?", choices=["a", "b"], labels=["A", "B"], answer=1)
    (row,) = cot_rationales({"test": [q]}, TeacherParams(backend="replay", replay_dir=str(folder), replay_source="cose"))
    assert row.rationale and row.answer == 1 and row.failure is None and row.model.startswith("CoS-E")


def test_study_switches_to_openai_with_set_only_and_writes_no_key(server, secret, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    server.answer = {"": "b"}
    cmd = [sys.executable, "-m", "lib.study", str(PROJECT_ROOT / "params" / "smoke.yaml"), "--run-dir", str(run_dir),
           "--steps", "01-02", "--set", "teacher.backend=openai", "--set", f"teacher.base_url={server.url}",
           "--set", "teacher.model=fake-1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "02_teacher" / "rationales.jsonl").read_text().splitlines()]
    assert rows and all(r["backend"] == "openai" and r["model"] == "fake-1" and r["failure"] is None for r in rows)
    causal = [json.loads(line) for line in (run_dir / "02_teacher" / "causal.jsonl").read_text().splitlines()]
    assert causal and all(r["failure"] is None and r["explanation"] for r in causal)
    sent = len(server.requests)
    forced = subprocess.run(cmd + ["--force"], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600)
    assert forced.returncode == 0 and len(server.requests) == sent  # re-executed, all from the cache
    files = written_files(run_dir)
    assert any(f.name == "02_teacher.ipynb" for f in files) and any(f.name == "manifest.json" for f in files)
    assert not any(SECRET.encode() in f.read_bytes() for f in files)


def test_templates_end_at_their_last_label():
    for path in TEMPLATES.glob("*.txt"):
        text = load_template(path.stem).text
        assert not text.endswith((" ", "\n")), f"{path.name}: the model would answer after a line break"
    q = MCQuestion("q", "Where is the sun?", ["sky", "sea"], ["A", "B"], 0)
    assert cot_prompt(q, 1).endswith("A:")


@pytest.mark.parametrize("text, rationale", [
    ("Beds are soft. So the answer is (b) bed.", "Beds are soft."),
    ("Beds are soft. Thus the answer would be (b) bed …", "Beds are soft."),
    ("Beds are soft. Therefore, the answer is (b).", "Beds are soft."),
    ("Beds are soft, hence the answer is b", "Beds are soft"),
    ("Beds are soft.\nAnswer: (b)", "Beds are soft."),
    ("Beds are soft. The answer is bed.", "Beds are soft."),
    ("Beds are soft. So the answer is (b) bed. So the answer is (b) bed.", "Beds are soft."),
    ("So the answer is (b", ""),
    ("Beds are soft. So the answer must be (b) bed.", "Beds are soft."),
    # PaLM's rationales open with "The answer must be ...": a premise, kept when it is the only sentence left
    ("The answer must be a place where people sleep. So the answer is (b) bed.",
     "The answer must be a place where people sleep."),
    ('The answer must be where "The Greatest Showman." plays. So the answer is (d) movie theatre.',
     'The answer must be where "The Greatest Showman." plays.'),
    # not a conclusion: an answer named before more reasoning, or a clause that does not start one
    ("So the answer is (b). Beds are soft.", "So the answer is (b). Beds are soft."),
    ("Birds fly, and also the answer is (c) sky.", "Birds fly, and also the answer is (c) sky."),
    ("The answerer is sure. Ice melts.", "The answerer is sure. Ice melts."),
])
def test_split_rationale_removes_only_a_concluding_answer_sentence(text, rationale):
    assert split_rationale(text) == rationale


class ScriptedEngine:
    """A teacher engine that answers each stage from a script: template name -> (text, failure)."""

    name = "scripted"

    def __init__(self, script: dict[str, tuple[str, str | None]]):
        self.script, self.prompts = script, []

    def ask(self, asks: list[Ask], desc: str = "") -> list:
        self.prompts.extend((a.template, a.prompt) for a in asks)
        out = []
        for a in asks:
            text, failure = self.script[a.template]
            out.append(Answer(Completion(text, "length" if failure == "truncated" else "stop", 1, 1), failure, 1, 0))
        return out


def test_a_truncated_stage_still_goes_to_the_next_and_the_first_failure_is_recorded():
    engine = ScriptedEngine({"explain": ("Boxes hold things and", "truncated"), "critique": ("Say why not sky.", None),
                             "revise": ("Boxes hold things; the sky holds none", "truncated")})
    (rev,) = critique_revisions(questions(1), TeacherParams(revise_max_questions=1), engine)
    assert (rev.initial, rev.critique, rev.revised) == ("Boxes hold things and", "Say why not sky.",
                                                        "Boxes hold things; the sky holds none")
    assert rev.failure == "explain: truncated"
    critique_prompt = dict(engine.prompts)["critique"]
    assert "Explanation: Boxes hold things and" in critique_prompt
    empty = ScriptedEngine({"explain": ("", "empty"), "critique": ("x", None), "revise": ("y", None)})
    (rev,) = critique_revisions(questions(1), TeacherParams(revise_max_questions=1), empty)
    assert (rev.revised, rev.failure) == ("", "explain: empty") and [t for t, _ in empty.prompts] == ["explain"]


def test_teacher_and_student_see_one_claim_evidence_block_with_the_evidence_label():
    pair = ClaimEvidence(id="c1:0", claim_id="c1", claim="Seas rise.", claim_label="DISPUTED",
                         evidence="Ice sheets are growing.", evidence_label="REFUTES", article="A")
    block = claim_evidence_text(pair)
    assert block == "Claim: Seas rise.\nEvidence: Ice sheets are growing.\nEvidence label: REFUTES"
    head = load_template("causal").text.rsplit("\n\n", 1)[0].replace("{{", "{").replace("}}", "}")
    assert causal_prompt(pair) == head + "\n\n" + block + "\nExplanation:"  # the worked example, then this pair
    engine = ScriptedEngine({"causal": ('{"cause": "a", "mechanism": "b", "effect": "c"}', None)})
    (row,) = causal_explanations({"train": [pair]}, TeacherParams(), engine)
    written = json.loads(json.dumps(dataclasses.asdict(row)))  # a row of 02_teacher/causal.jsonl
    assert written["evidence_label"] == "REFUTES" and written["claim_label"] == "DISPUTED"
    assert causal_student_prompt(written) == causal_student_prompt(pair) == block + "\nExplanation:"
    assert dict(engine.prompts)["causal"] == causal_prompt(written)
    with pytest.raises(ValueError, match="lacks evidence_label.*rerun step 02_teacher"):
        causal_student_prompt({k: v for k, v in written.items() if k != "evidence_label"})


def test_a_long_teacher_task_notes_how_far_it_is_in_the_progress_log(server, secret, tmp_path):
    lines: list[str] = []
    engine = make_teacher(params(server), run_dir=tmp_path, progress=lines.append)
    engine.progress_every_s = 0.0  # a line per finished item (a study notes one a minute)
    engine.complete(["p1", "p2", "p3"], desc="votes")
    assert lines[0].startswith("votes: 1/3 items, ") and "min left" in lines[0]
    assert lines[-1].startswith("votes: 3 items in ")
    assert lines[-1].endswith("(0 from the cache, 3 generated, 0 failed)")
    engine.progress_every_s = 60.0
    engine.complete(["p1", "p2", "p3"], desc="votes")
    assert lines[-1].endswith("(3 from the cache, 0 generated, 0 failed)") and len(lines) == 5


# ---------------------------------------------------------------- the Hendriks et al. replay (LLaMA-2-13B)

HENDRIKS = SHARED_DATA / "hendriks_llm_outputs"
OPTIONS = ["bed", "sea", "sky", "box", "car"]


def csqa_questions(n: int, prefix: str = "h", answer: int = 2) -> list[MCQuestion]:
    """Five-option questions as step 01 writes CommonsenseQA's."""
    return [MCQuestion(id=f"{prefix}{i}", question=f"Where is {prefix}{i}?", choices=list(OPTIONS),
                       labels=list("ABCDE"), answer=answer, source="csqa") for i in range(n)]


def hendriks_row(q: MCQuestion, **texts: str) -> dict:
    """One shard row in Hendriks et al.'s columns; a text not given is made up from the column."""
    cols = {"few_shot_positive_rationale": f"{q.id} because {q.choices[q.answer]}.",
            "few_shot_negative_rationale": f"{q.id} obviously.",
            "few_shot_revision": f"{q.id} revised.\n\nI hope this helps!",
            **{f"counterfactual_prompt_answer_{k}_rationale": f"{q.id} argues {c}."
               for k, c in enumerate(q.choices, 1)}}
    return {"id": q.id, "question": q.question, "choices": q.choices, "answer": q.choices[q.answer], **cols, **texts}


def write_hendriks(root: Path, shards: dict[str, list[list[dict]]]) -> Path:
    """A tiny replay folder: per split, its shards (lists of rows) saved with `save_to_disk`."""
    import datasets

    for split, parts in shards.items():
        for k, rows in enumerate(parts):
            columns = {c: [r[c] for r in rows] for c in rows[0]}
            datasets.Dataset.from_dict(columns).save_to_disk(str(root / f"cqa-llama-{split}" / f"shard_{k}"))
    return root


@pytest.fixture()
def hendriks(tmp_path) -> tuple[TeacherParams, dict[str, list[MCQuestion]]]:
    """Three training questions in two shards (one revision empty) and one test question; plus one unrecorded."""
    train, test = csqa_questions(3), csqa_questions(1, "d")
    rows = [hendriks_row(train[0]), hendriks_row(train[1], few_shot_revision=""),
            hendriks_row(train[2], counterfactual_prompt_answer_1_rationale=" ")]
    folder = write_hendriks(tmp_path / "llm_outputs",
                            {"train": [rows[:2], rows[2:]], "test": [[hendriks_row(test[0])]]})
    p = TeacherParams(backend="replay", replay_dir=str(folder), replay_source="hendriks")
    return p, {"train": train + csqa_questions(1, "unrecorded"), "test": test}


def test_hendriks_shards_load_in_order_and_count_empty_texts_by_column(hendriks):
    p, _ = hendriks
    got = load_hendriks(p.replay_dir, "train")
    assert list(got) == ["h0", "h1", "h2"] and got["h2"].source.endswith("cqa-llama-train/shard_1")
    assert got["h0"].texts["few_shot_revision"] == "h0 revised."  # the first line, as upstream trains on
    assert hendriks_empty_counts(got) == {"few_shot_revision": 1, "counterfactual_prompt_answer_1_rationale": 1}


def test_hendriks_rationales_are_given_answers_and_no_predictions(hendriks):
    p, qs = hendriks
    rows = cot_rationales(qs, p)
    assert [(r.id, r.split, r.failure) for r in rows] == [
        ("h0", "train", None), ("h1", "train", None), ("h2", "train", None), ("unrecorded0", "train", "not recorded"),
        ("d0", "test", None)]
    r = rows[0]
    assert r.rationale == "h0 because sky." and r.answer is None and not r.correct and r.answer_given
    assert r.model == "LLaMA-2-13B (Hendriks et al., replayed)" and r.backend == "replay"
    assert r.source.endswith("cqa-llama-train/shard_0") and rows[-1].source.endswith("cqa-llama-test/shard_0")
    assert set(dataclasses.asdict(r)) == {f.name for f in dataclasses.fields(Rationale)}
    assert summarize(rows)["train"]["accuracy"] is None and summarize(rows)["train"]["answer_given"] == 4
    assert read_rationales_rows([dataclasses.asdict(x) for x in rows], "parsed") == ["h0", "h1", "h2", "d0"]


def read_rationales_rows(rows: list[dict], rationale_filter: str) -> list[str]:
    """The ids whose rationale rows pass the filter, as training and CEC read 02_teacher/rationales.jsonl."""
    return [r["id"] for r in rows if passes_rationale_filter(r, rationale_filter)]


def test_hendriks_revisions_have_the_schema_revised_runs_read(hendriks):
    p, qs = hendriks
    revs = critique_revisions(qs["train"], p)
    assert [(r.id, r.failure) for r in revs] == [("h0", None), ("h1", "revise: empty"), ("h2", None),
                                                 ("unrecorded0", "not recorded")]
    assert revs[0].initial == "h0 because sky." and revs[0].revised == "h0 revised." and revs[0].critique == ""
    assert revs[0].model == "LLaMA-2-13B (Hendriks et al., replayed)" and revs[0].source.endswith("shard_0")
    rows = [dataclasses.asdict(r) for r in revs]
    assert set(rows[0]) == {f.name for f in dataclasses.fields(Revision)}
    assert revised_rationales(rows, "parsed") == {"h0": "h0 revised.", "h2": "h2 revised."}
    assert revised_rationales(rows, "any") == {"h0": "h0 revised.", "h2": "h2 revised."}  # empty stays out
    assert critique_revisions(qs["train"], p.model_copy(update={"revise_max_questions": 1}))[0].id == "h0"


class ReplayTeacher:
    """A teacher engine's face as step 03 sees it (name and params), that must not be asked anything."""

    name = "gemma3-270m-gguf"

    def __init__(self, params: TeacherParams):
        self.params = params

    def complete(self, *args, **kwargs):
        raise AssertionError("the Hendriks replay asks no model for counterfactual rationales")


def test_hendriks_counterfactual_rationales_feed_cf_training(hendriks):
    import random

    p, qs = hendriks
    rows = build_cf_rationales(qs, ReplayTeacher(p), CounterfactualParams(), seed=3)
    rng = random.Random(3)  # the wrong option build_cf_rationales draws for each question comes first
    drawn = {q.id: rng.choice([i for i in range(5) if i != q.answer]) for q in qs["train"] + qs["test"]}
    by_q = {qid: [r.option for r in rows if r.id == qid] for qid in ("h0", "h2", "d0")}
    assert by_q["h0"][0] == drawn["h0"] and sorted(by_q["h0"]) == [0, 1, 3, 4]
    assert sorted(by_q["h2"]) == [1, 3, 4]  # its option-A rationale is empty: dropped
    assert not any(r.id == "unrecorded0" for r in rows) and all(r.option != 2 for r in rows)
    r = next(r for r in rows if r.id == "h0" and r.option == 0)
    assert (r.text, r.split, r.teacher_model) == ("h0 argues bed.", "train", "LLaMA-2-13B (Hendriks et al., replayed)")
    assert r.source.endswith("cqa-llama-train/shard_0") and {x.split for x in rows} == {"train", "test"}
    assert set(dataclasses.asdict(r)) == {f.name for f in dataclasses.fields(CounterfactualRationale)}
    cf_rows = [dataclasses.asdict(x) for x in rows]
    cf = condition_examples("CF", qs["train"], {"h0": "h0 because sky."}, cf_rationales=cf_rows, answer_format="text")
    assert [e.task for e in cf].count("counterfactual") == 3  # h0, h1, h2: one each, the seeded wrong option
    assert cf[1].prompt.endswith(f"h0 argues {OPTIONS[drawn['h0']]}.")  # read, then the option's answer sentence
    assert cf[1].target == f" So the answer is {OPTIONS[drawn['h0']]}."
    capped = build_cf_rationales(qs, ReplayTeacher(p), CounterfactualParams(cf_rationale_questions=1), seed=3)
    assert {r.id for r in capped} == {"h0", "d0"}


def test_hendriks_side_by_side_shows_one_item(hendriks):
    p, qs = hendriks
    frame = hendriks_side_by_side(qs["train"], p)
    assert frame[["unrevised", "negative", "revised"]].iloc[0].tolist() == ["h0 because sky.", "h0 obviously.",
                                                                            "h0 revised."]
    assert hendriks_side_by_side(qs["train"], TeacherParams()).empty


def test_hendriks_answer_or_options_that_are_not_the_questions_are_refused(tmp_path):
    q = csqa_questions(1)[0]
    folder = write_hendriks(tmp_path / "wrong", {"train": [[hendriks_row(q, answer="sea")]],
                                                 "test": [[hendriks_row(csqa_questions(1, "d")[0])]]})
    p = TeacherParams(backend="replay", replay_dir=str(folder), replay_source="hendriks")
    with pytest.raises(DataError, match=r"cqa-llama-train/shard_0: id 'h0': the recorded answer 'sea'.*gold 'sky'"):
        cot_rationales({"train": [q]}, p)
    shuffled = dataclasses.replace(q, choices=OPTIONS[::-1], answer=2)  # same gold text, other option order
    with pytest.raises(DataError, match="id 'h0'.*point teacher.replay_dir"):
        critique_revisions([shuffled], p.model_copy(update={"replay_dir": str(write_hendriks(
            tmp_path / "ok", {"train": [[hendriks_row(q)]], "test": [[hendriks_row(csqa_questions(1, "d")[0])]]}))}))


def test_hendriks_duplicate_ids_gaps_and_folders_are_refused(tmp_path):
    q, d = csqa_questions(1)[0], csqa_questions(1, "d")[0]
    twice = write_hendriks(tmp_path / "twice", {"train": [[hendriks_row(q)], [hendriks_row(q)]]})
    with pytest.raises(DataError, match="shard_1 row 0: id 'h0' appears twice in train"):
        load_hendriks(twice, "train")
    gap = write_hendriks(tmp_path / "gap", {"train": [[hendriks_row(q)], [hendriks_row(d)]]})
    (gap / "cqa-llama-train" / "shard_1").rename(gap / "cqa-llama-train" / "shard_2")
    with pytest.raises(DataError, match=r"numbered \[0, 2\]"):
        load_hendriks(gap, "train")
    with pytest.raises(ValueError, match="lacks cqa-llama-test"):
        TeacherParams(backend="replay", replay_dir=str(twice), replay_source="hendriks")


def test_hendriks_replay_refuses_the_correct_filter(hendriks):
    smoke = PROJECT_ROOT / "params" / "smoke.yaml"
    replay = ["teacher.backend=replay", f"teacher.replay_dir={hendriks[0].replay_dir}", "teacher.replay_source=hendriks"]
    assert load_params(smoke, replay + ["training.rationale_filter=parsed"]).teacher.replay_source == "hendriks"
    with pytest.raises(ParamsError, match="rationale_filter is correct, but the Hendriks replay"):
        load_params(smoke, replay + ["training.rationale_filter=correct"])


@pytest.mark.skipif(not HENDRIKS.is_dir(), reason="shared Hendriks et al. outputs absent")
def test_real_hendriks_outputs_match_commonsenseqa():
    from lib.data import load_multiple_choice

    train, test = load_hendriks(HENDRIKS, "train"), load_hendriks(HENDRIKS, "test")
    assert (len(train), len(test)) == (9741, 1221)  # test = CommonsenseQA dev
    assert hendriks_empty_counts(train) == {  # data/SOURCES.md section 6
        "few_shot_negative_rationale": 1, "few_shot_revision": 5, "counterfactual_prompt_answer_2_rationale": 1,
        "counterfactual_prompt_answer_3_rationale": 1, "counterfactual_prompt_answer_4_rationale": 2,
        "counterfactual_prompt_answer_5_rationale": 3}
    assert hendriks_empty_counts(test) == {"few_shot_revision": 2}
    csqa = SHARED_DATA / "commonsenseqa"
    qs = {"train": load_multiple_choice(str(csqa / "train_rand_split.jsonl"), "commonsenseqa"),
          "test": load_multiple_choice(str(csqa / "dev_rand_split.jsonl"), "commonsenseqa")}
    assert len(match_hendriks({**train, **test}, qs)) == 9741 + 1221  # every id and gold answer matches
    p = TeacherParams(backend="replay", replay_dir=str(HENDRIKS), replay_source="hendriks")
    few = {"train": qs["train"][:20], "test": qs["test"][:5]}
    rows = cot_rationales(few, p)
    assert all(r.rationale and r.answer is None and r.answer_given and r.failure is None for r in rows)
    assert {r.source.rsplit("/", 2)[-2] for r in rows} == {"cqa-llama-train", "cqa-llama-test"}
    revs = critique_revisions(few["train"], p)
    assert sum(r.failure is None and bool(r.revised) for r in revs) >= 19
    cf = build_cf_rationales(few, ReplayTeacher(p), CounterfactualParams(), seed=0)
    assert len(cf) >= 4 * 25 - 5 and all(0 <= r.option < 5 and r.text for r in cf)
    assert all(r.option != q.answer for q in few["train"] + few["test"] for r in cf if r.id == q.id)
