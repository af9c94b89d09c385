"""The transformers backend: batching, greedy equivalence, sampling, logprobs, limits, streaming,
deadlines, cancellation, model loading errors, and the model pool."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from looptool.services.inference.backends import BackendError, CancelToken, make_backend, split_error
from looptool.services.inference.backends.hf import TransformersBackend, locate_model
from looptool.services.inference.pool import ModelPool
from looptool.shared.config import InferenceSettings
from looptool.shared.generation import GenRequest, SamplingParams
from looptool.shared.prompt import build_chat
from looptool.shared.records import Message

from support.inference import CITIES, WEATHER, one_torch_thread, tiny_model_dir  # noqa: F401


@pytest.fixture(scope="module")
def backend():
    b = TransformersBackend(str(tiny_model_dir()), max_batch_size=16, batch_wait_ms=30, max_context=2048)
    yield b
    b.close()


def req(text: str, max_tokens: int = 16, tools=None, **params) -> GenRequest:
    return GenRequest([Message(role="user", content=text)], tools or [], SamplingParams(max_tokens=max_tokens, **params))


PROMPTS = [f"What is the weather in {c}? " * (i % 3 + 1) for i, c in enumerate(CITIES)]


def test_concurrent_requests_are_batched_and_match_unbatched_greedy(backend):
    unbatched = [backend.generate([req(p)])[0] for p in PROMPTS]
    before = backend.queue.batches_run
    busy = backend.submit(req("hi", max_tokens=300))  # occupies the worker while the others queue up
    while backend.queue.batches_run == before:
        time.sleep(0.002)
    before = backend.queue.batches_run
    futures = [backend.submit(req(p)) for p in PROMPTS]
    batched = [f.result() for f in futures]
    busy.result()
    assert backend.queue.batch_sizes[-1] == len(PROMPTS)  # all ten queued requests ran as one batch
    assert backend.queue.batches_run - before <= 2
    for u, b in zip(unbatched, batched):
        assert not u.error and not b.error
        assert b.completions[0].text == u.completions[0].text  # left padding does not change greedy output
        assert b.completion_tokens == u.completion_tokens
        assert b.completions[0].mean_logprob == pytest.approx(u.completions[0].mean_logprob, abs=1e-4)
    assert len({b.completions[0].text for b in batched}) > 1  # the tiny model's outputs do vary


def test_greedy_equals_plain_generate_and_logprob_is_the_models(backend):
    r = req("Book a flight from Oslo to Rome", max_tokens=12)
    res = backend.generate([r])[0]
    ids = backend.encode(r)
    model, tok = backend.hf_model, backend.tokenizer
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=12, do_sample=False, pad_token_id=backend.pad_id, eos_token_id=backend.eos_ids)
        gen = out[0, len(ids):].tolist()
        assert backend.decode(gen) == res.completions[0].text
        logits = model(out).logits[0, len(ids) - 1 : -1].float()
        lp = torch.log_softmax(logits, -1).gather(1, out[0, len(ids):, None])[:, 0]
    assert res.completions[0].mean_logprob == pytest.approx(lp.mean().item(), abs=1e-4)
    assert res.prompt_tokens == len(ids) and res.completion_tokens == len(gen)


def test_prompt_is_rendered_with_the_models_chat_template_from_build_chat(backend):
    r = req("hi", tools=[WEATHER])
    text = backend.render(r)
    expected = backend.tokenizer.apply_chat_template(build_chat(r.messages, r.tools), tokenize=False, add_generation_prompt=True)
    assert text == expected and "<tools>" in text and text.endswith("<|im_start|>assistant\n")


def test_sampling_is_seeded_per_request_independent_of_batch(backend):
    sampled = req("Weather in Lisbon", max_tokens=12, temperature=1.0, n=3, seed=7)
    alone = backend.generate([sampled])[0]
    futures = [backend.submit(req(p)) for p in PROMPTS[:5]] + [backend.submit(sampled)]
    mixed = futures[-1].result()
    [f.result() for f in futures]
    assert [c.text for c in alone.completions] == [c.text for c in mixed.completions]
    assert len(alone.completions) == 3 and len({c.text for c in alone.completions}) > 1
    other = backend.generate([req("Weather in Lisbon", max_tokens=12, temperature=1.0, n=3, seed=8)])[0]
    assert [c.text for c in other.completions] != [c.text for c in alone.completions]


def test_per_row_max_tokens_stop_strings_and_finish_reasons(backend):
    base = backend.generate([req(PROMPTS[0], max_tokens=20)])[0].completions[0]
    assert base.finish_reason in ("length", "stop")
    stop = base.text[5:8]
    assert stop and stop in base.text
    short, stopped = backend.generate([req(PROMPTS[0], max_tokens=3), req(PROMPTS[0], max_tokens=20, stop=[stop])])
    assert short.completion_tokens == 3 and short.completions[0].finish_reason == "length"
    s = stopped.completions[0]
    assert s.finish_reason == "stop" and stop not in s.text and base.text.startswith(s.text)
    assert s.text == base.text[: base.text.find(stop)]


def test_prompt_over_context_is_a_per_item_error(backend):
    small = TransformersBackend(str(tiny_model_dir()), max_context=64)
    try:
        ok_and_bad = small.generate([GenRequest([Message(role="user", content="x")]), req("hi " * 200)])
        # even the short chat has the long system prompt: both over 64 tokens
        assert all(split_error(r.error)[0] == "INVALID_ARGUMENT" for r in ok_and_bad)
        assert "context limit is 64" in ok_and_bad[1].error
    finally:
        small.close()
    res = backend.generate([req("hi " * 3000), req("hi")])
    assert split_error(res[0].error)[0] == "INVALID_ARGUMENT" and "context limit" in res[0].error
    assert not res[1].error and res[1].completions


def test_streaming_deltas_concatenate_to_the_final_text(backend):
    deltas: list[str] = []
    res = backend.submit(req(PROMPTS[2], max_tokens=24), on_delta=lambda i, d: deltas.append(d)).result()
    assert len(deltas) > 3
    assert "".join(deltas) == res.completions[0].text


def test_deadline_exceeded_while_running_and_while_queued(backend):
    t0 = time.monotonic()
    long = backend.submit(req("hi", max_tokens=1000), deadline=time.monotonic() + 0.15)
    queued_dead = backend.submit(req("hi", max_tokens=5), deadline=time.monotonic() - 1)
    res = long.result(timeout=30)
    assert split_error(res.error)[0] == "DEADLINE_EXCEEDED"
    assert res.completions[0].finish_reason == "cancelled" and res.completion_tokens < 1000
    assert time.monotonic() - t0 < 5
    assert split_error(queued_dead.result(timeout=5).error)[0] == "DEADLINE_EXCEEDED"


def test_cancellation_stops_a_running_request_and_drops_queued_ones(backend):
    token = CancelToken()
    running = backend.submit(req("hi", max_tokens=1000), cancel=token)
    time.sleep(0.1)
    token.cancel()
    res = running.result(timeout=30)
    assert split_error(res.error)[0] == "CANCELLED" and res.completion_tokens < 1000
    dead = CancelToken()
    dead.cancel()
    assert split_error(backend.submit(req("hi"), cancel=dead).result(timeout=5).error)[0] == "CANCELLED"
    # a cancelled request never holds up the others in its batch
    other_token = CancelToken()
    fa = backend.submit(req("hi", max_tokens=1000), cancel=other_token)
    fb = backend.submit(req(PROMPTS[1], max_tokens=8))
    threading.Timer(0.05, other_token.cancel).start()
    assert not fb.result(timeout=30).error
    assert split_error(fa.result(timeout=30).error)[0] == "CANCELLED"


def test_model_loading_errors_are_clear(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        TransformersBackend(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackendError, match="not a model directory"):
        TransformersBackend(str(empty))
    with pytest.raises(BackendError, match="no model configured"):
        make_backend(InferenceSettings(model=""))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    assert locate_model(str(fake)) == (str(tmp_path), "m.gguf")
    assert locate_model(str(tmp_path)) == (str(tmp_path), "m.gguf")
    with pytest.raises(BackendError, match="gguf|GGUF"):
        TransformersBackend(str(fake))


def test_model_pool_keeps_two_models_and_defers_closing_a_leased_one(tmp_path):
    d = tiny_model_dir()
    (tmp_path / "b").symlink_to(d, target_is_directory=True)
    (tmp_path / "c").symlink_to(d, target_is_directory=True)
    pool = ModelPool(InferenceSettings(model=str(d)), size=2)
    try:
        a = pool.get("")
        with pool.lease(str(tmp_path / "b")) as b:
            assert pool.loaded() == [str(d), str(tmp_path / "b")]
            with pool.lease(""):
                pool.get(str(tmp_path / "c"))  # evicts the least recently used: b (a was just leased)
            assert pool.loaded() == [str(d), str(tmp_path / "c")]
            assert not b.generate([req("hi", max_tokens=2)])[0].error  # still usable while leased
        assert split_error(b.generate([req("hi", max_tokens=2)])[0].error)[0] == "UNAVAILABLE"  # closed on release
        assert pool.get("") is a
    finally:
        pool.close()
