"""Generation helpers of lib.models: stop strings and the reuse of their criteria."""

import pytest

from lib.models import generate_texts, load_causal_lm, load_tokenizer, stop_string_criteria, TINY_GEMMA


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm(TINY_GEMMA), load_tokenizer(TINY_GEMMA)


def test_generation_stops_at_the_stop_string_and_cuts_it(tiny):
    model, tok = tiny
    prompt = "Q: Where do fish live?\nA:"
    (full,) = generate_texts(model, tok, [prompt], max_new_tokens=24, stop=None, progress=False)
    text = full[0].text
    stop = next(text[i:i + 2] for i in range(len(text) // 3, len(text) - 1) if text[i:i + 2].strip() == text[i:i + 2])
    (cut,) = generate_texts(model, tok, [prompt], max_new_tokens=24, stop=stop, progress=False)
    assert cut[0].text == text.split(stop)[0].strip()
    assert cut[0].finish_reason == "stop" and cut[0].completion_tokens < full[0].completion_tokens


def test_stop_criteria_are_built_once_per_tokenizer_and_vocabulary(tiny, monkeypatch):
    import transformers

    model, tok = tiny
    built = []
    real = transformers.StopStringCriteria

    def counting(tokenizer, stops):
        built.append(tuple(stops))
        return real(tokenizer, stops)

    monkeypatch.setattr(transformers, "StopStringCriteria", counting)
    fresh = load_tokenizer(TINY_GEMMA)
    first = generate_texts(model, fresh, ["Q: a?\nA:", "Q: b?\nA:"], max_new_tokens=4, batch_size=1, progress=False)
    again = generate_texts(model, fresh, ["Q: a?\nA:", "Q: b?\nA:"], max_new_tokens=4, batch_size=1, progress=False)
    assert built == [("\n\nQ:",)]  # one criteria for two calls of two batches each
    assert [c[0].text for c in first] == [c[0].text for c in again]
    assert stop_string_criteria(fresh, "\n\nQ:") is stop_string_criteria(fresh, "\n\nQ:")
    fresh.add_tokens(["<new-strategy>"])
    stop_string_criteria(fresh, "\n\nQ:")
    assert len(built) == 2  # a grown vocabulary gets criteria of its own
