"""JGLV: the strict verdict parser, the LLM judge (retries, votes, label checks), the grounding
judge's decisions, and the judge stage (failed-only, relabel lineage, resume, counts)."""

from __future__ import annotations

import json

import pytest

from looptool.services.inference.judge import (
    GroundingJudge,
    LLMJudge,
    judge_messages,
    parse_verdict,
    run_judge,
    value_supported,
    Evidence,
)
from looptool.shared.loop.manifest import JudgeSpec
from looptool.shared.records import (
    Decision,
    ErrorInfo,
    JudgedSample,
    Message,
    ProbeOutcome,
    ProbeResult,
    Sample,
    StageResult,
    ToolCall,
)
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.toolcall_format import render_tool_calls

from support.inference import FLIGHT, WEATHER, ScriptedGenerator

# ------------------------------------------------------------------------------ parser


@pytest.mark.parametrize(
    "text, decision, reason",
    [
        ('{"decision": "label_wrong", "reason": "user said Paris"}', "label_wrong", "user said Paris"),
        ('```json\n{"decision": "model_wrong", "reason": "r"}\n```', "model_wrong", "r"),
        ('Sure! Here is my verdict: {"decision": "Both-Acceptable", "reason": " both fine "} Hope it helps.', "both_acceptable", "both fine"),
        ('<think>maybe {"decision": "label_wrong"}</think>{"decision": "unclear", "reason": ""}', "unclear", ""),
        ('{"decision": "MODEL WRONG"}', "model_wrong", ""),
        ('{"decision": "model_wrong", "reason": null, "correct_approach": "call f"}', "model_wrong", ""),
        ('{"a": 1} {"decision": "label_wrong", "reason": "x"} {"decision": "label_wrong"}', "label_wrong", "x"),
        ('{"reason": "nested {braces} ok", "decision": "unclear"}', "unclear", "nested {braces} ok"),
    ],
)
def test_parse_verdict_accepts(text, decision, reason):
    p = parse_verdict(text)
    assert p.ok and p.decision.value == decision and p.reason == reason


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "no JSON object"),
        ("label_wrong", "no JSON object"),
        ('{"decision": "label_wrong", "reason": "x",}', "no JSON object"),
        ("{'decision': 'label_wrong'}", "no JSON object"),
        ('{"decision": "wrong_label"}', "not one of"),
        ('{"decision": 3}', "not one of"),
        ('{"decision": "label_wrong", "reason": ["a"]}', "must be a string"),
        ('{"decision": "label_wrong"} {"decision": "model_wrong"}', "conflicting"),
        ('{"verdict": {"decision": "label_wrong"}}', "no JSON object"),
        ('{"decision": "label_wrong"', "no JSON object"),
        ("[" * 5000 + "{" * 5000, "no JSON object"),
        (None, "not text"),
        ('<think>{"decision": "label_wrong"}</think>', "no JSON object"),
    ],
)
def test_parse_verdict_rejects_without_raising(text, fragment):
    p = parse_verdict(text)
    assert not p.ok and fragment in p.error


# ------------------------------------------------------------------------------ fixtures


def call(name, **args):
    return ToolCall(name=name, arguments=args)


def probe_result(user: str, label: list[ToolCall], prediction: str, outcome=ProbeOutcome.FAILED, tools=None, tool_msg: str = "") -> ProbeResult:
    ctx = [Message(role="user", content=user)]
    if tool_msg:
        ctx += [Message(role="assistant", tool_calls=[call("get_weather", city="Paris")]), Message(role="tool", name="get_weather", content=tool_msg)]
    s = Sample(context=ctx, tools=tools or [WEATHER, FLIGHT], reference=label).with_id()
    return ProbeResult(sample=s, prediction=prediction, outcome=outcome)


def calls_text(*calls):
    return render_tool_calls(list(calls))


# ------------------------------------------------------------------------------ LLM judge


def verdict_json(decision, reason="because"):
    return json.dumps({"decision": decision, "reason": reason})


def test_llm_judge_prompt_shows_context_tools_label_and_prediction():
    pr = probe_result("Weather in Paris please", [call("get_weather", city="Rome")], calls_text(call("get_weather", city="Paris")))
    msgs = judge_messages(pr)
    body = msgs[-1].content
    assert msgs[0].role == "system" and "Weather in Paris please" in body
    assert '"name": "get_weather"' in body and '"city": "Rome"' in body and '"city": "Paris"' in body
    assert '"decision"' in body and "label_wrong" in body


def test_llm_judge_label_wrong_gives_validated_correction():
    pr = probe_result("Weather in Paris", [call("get_weather", city="Rome")], calls_text(call("get_weather", city="Paris")))
    gen = ScriptedGenerator(lambda r, i: verdict_json("label_wrong", "the user asked for Paris"))
    [v] = LLMJudge(gen).judge([pr])
    assert v.decision == Decision.LABEL_WRONG and v.corrected == [call("get_weather", city="Paris")]
    assert v.votes == 1 and v.total_votes == 1 and "Paris" in v.reason
    assert gen.requests[0].params.temperature == 0 and gen.requests[0].tools == []


def test_llm_judge_label_wrong_with_invalid_prediction_becomes_unclear():
    bad_args = probe_result("Weather in Paris", [call("get_weather", city="Rome")], calls_text(call("get_weather", town="Paris")))
    unparsable = probe_result("Weather in Paris", [call("get_weather", city="Rome")], "<tool_call>{oops")
    text_only = probe_result("Weather in Paris", [call("get_weather", city="Rome")], "Which unit do you want?")
    gen = ScriptedGenerator(lambda r, i: verdict_json("label_wrong"))
    verdicts = LLMJudge(gen).judge([bad_args, unparsable, text_only])
    assert [v.decision for v in verdicts] == [Decision.UNCLEAR] * 3
    assert "town" in verdicts[0].reason and "does not parse" in verdicts[1].reason and "no call" in verdicts[2].reason
    assert all(not v.corrected for v in verdicts)


def test_llm_judge_retries_malformed_output_with_new_seeds_then_gives_unclear():
    good = probe_result("Weather in Paris", [call("get_weather", city="Paris")], "no idea")
    flaky = probe_result("Weather in Rome", [call("get_weather", city="Rome")], "no idea")
    hopeless = probe_result("Weather in Oslo", [call("get_weather", city="Oslo")], "no idea")
    attempts: dict[str, int] = {}

    def script(r, i):
        sid = r.request_id.split(":")[1]
        attempts[sid] = attempts.get(sid, 0) + 1
        if sid == flaky.sample.id and attempts[sid] < 3:
            return "I think the model is wrong."  # malformed twice, then fine
        if sid == hopeless.sample.id:
            return '{"decision": "maybe"}'
        return verdict_json("model_wrong")

    gen = ScriptedGenerator(script)
    v_good, v_flaky, v_hopeless = LLMJudge(gen, retries=2).judge([good, flaky, hopeless])
    assert v_good.decision == v_flaky.decision == Decision.MODEL_WRONG
    assert v_hopeless.decision == Decision.UNCLEAR and "unparseable" in v_hopeless.reason and v_hopeless.votes == 0
    assert attempts == {good.sample.id: 1, flaky.sample.id: 3, hopeless.sample.id: 3}
    seeds = [r.params.seed for r in gen.requests if r.request_id.split(":")[1] == hopeless.sample.id]
    assert len(set(seeds)) == len(seeds) == 3  # every retry of a vote uses a new seed
    assert all(r.params.temperature > 0 for r in gen.requests if r.request_id.startswith("judge-retry"))
    assert len(json.loads(v_hopeless.raw)) == 1


def test_llm_judge_generation_errors_are_unclear_with_judge_error():
    pr = probe_result("Weather in Paris", [call("get_weather", city="Paris")], "x")
    [v] = LLMJudge(ScriptedGenerator(lambda r, i: Exception("UNAVAILABLE: judge endpoint down"))).judge([pr])
    assert v.decision == Decision.UNCLEAR and v.reason.startswith("judge_error") and "endpoint down" in v.reason


def test_llm_judge_self_consistency_majority_and_ties():
    pr = probe_result("Weather in Paris", [call("get_weather", city="Rome")], calls_text(call("get_weather", city="Paris")))
    majority = ScriptedGenerator(lambda r, i: verdict_json(["label_wrong", "model_wrong", "label_wrong"][i]))
    [v] = LLMJudge(majority, votes=3, temperature=0.8).judge([pr])
    assert v.decision == Decision.LABEL_WRONG and (v.votes, v.total_votes) == (2, 3)
    assert majority.requests[0].params.n == 3 and majority.requests[0].params.temperature == 0.8
    tie = ScriptedGenerator(lambda r, i: verdict_json(["label_wrong", "model_wrong"][i]))
    [v] = LLMJudge(tie, votes=2).judge([pr])
    assert v.decision == Decision.UNCLEAR and "tie" in v.reason
    # a malformed vote is retried and then counts like the others
    seq = iter(["garbage", verdict_json("model_wrong"), verdict_json("model_wrong")])
    [v] = LLMJudge(ScriptedGenerator(lambda r, i: next(seq)), votes=2).judge([pr])
    assert v.decision == Decision.MODEL_WRONG and v.votes == 2


# ------------------------------------------------------------------------------ grounding judge


def test_value_support_rules():
    ev = Evidence.of(Sample(context=[
        Message(role="user", content="Book 1,250 seats from New-York to São Paulo on the 3rd, price 19.50"),
        Message(role="tool", content='{"temp": 21.0, "station": "JFK_Main"}'),
        Message(role="system", content="Madrid"),
    ]))
    assert value_supported("new york", {}, ev) and value_supported("SÃO PAULO", {}, ev)
    assert value_supported(1250, {}, ev) and value_supported(19.5, {}, ev) and value_supported(21, {}, ev)
    assert value_supported("jfk main", {}, ev) and value_supported("1250", {}, ev)
    assert not value_supported("York City", {}, ev) and not value_supported(7, {}, ev)
    assert not value_supported("Madrid", {}, ev)  # system text is not evidence
    assert not value_supported("Pa", {}, ev)  # word boundaries
    assert value_supported(True, {}, ev) and value_supported(None, {}, ev)
    assert value_supported("fahrenheit", {"enum": ["celsius", "fahrenheit"]}, ev)
    assert value_supported(3, {"default": 3}, ev) and not value_supported(4, {"default": 3}, ev)


def test_grounding_judge_decisions():
    j = GroundingJudge()
    user = "What's the weather in Paris for 3 days?"
    paris3 = call("get_weather", city="Paris", days=3)
    label_wrong = probe_result(user, [call("get_weather", city="Lyon", days=3)], calls_text(paris3))
    model_wrong = probe_result(user, [paris3], calls_text(call("get_weather", city="Berlin", days=3)))
    unparsable = probe_result(user, [paris3], "<tool_call>{")
    both = probe_result(user, [paris3], calls_text(call("get_weather", city="Paris", days=3, unit="fahrenheit")))
    neither = probe_result(user, [call("get_weather", city="Rome")], calls_text(call("get_weather", city="Oslo")))
    invalid_pred = probe_result(user, [call("get_weather", city="Lyon")], calls_text(call("get_weather", city="Paris", days="3")))
    missed = probe_result("Weather in Paris and in Rome", [call("get_weather", city="Paris"), call("get_weather", city="Rome")],
                          calls_text(call("get_weather", city="Paris")))
    from_tool = probe_result("Book me a flight to Rome from the city you just checked", [call("book_flight", origin="Paris", destination="Rome")],
                             calls_text(call("book_flight", origin="Oslo", destination="Rome")), tool_msg='{"city": "Paris", "temp": 20}')
    vs = j.judge([label_wrong, model_wrong, unparsable, both, neither, invalid_pred, missed, from_tool])
    assert [v.decision for v in vs] == [
        Decision.LABEL_WRONG, Decision.MODEL_WRONG, Decision.MODEL_WRONG, Decision.BOTH_ACCEPTABLE,
        Decision.BOTH_WRONG, Decision.BOTH_WRONG, Decision.MODEL_WRONG, Decision.MODEL_WRONG,
    ]
    assert vs[0].corrected == [paris3] and 'get_weather.city="Lyon" not found' in vs[0].reason
    assert 'Berlin' in vs[1].reason and "unparseable" in vs[2].reason
    assert "Rome" in vs[4].reason and "Oslo" in vs[4].reason
    assert "days" in vs[5].reason  # "3" is not an integer: the prediction fails its schema
    assert "misses calls" in vs[6].reason
    assert all(not v.corrected for v in vs[1:])


# ------------------------------------------------------------------------------ stage


def write_probe_results(uri, results):
    w = writer_for_uri(uri, kind="probe_results")
    w.write_many(results)
    return w.commit()


def test_run_judge_judges_failed_only_relabels_with_lineage_and_resumes(tmp_path):
    user = "What's the weather in Paris for 3 days?"
    paris3 = call("get_weather", city="Paris", days=3)
    results = [
        probe_result(user + f" #{i}", [call("get_weather", city="Lyon", days=3)], calls_text(paris3)) for i in range(5)
    ] + [
        probe_result(user + f" #{i}", [paris3], calls_text(call("get_weather", city="Berlin", days=3))) for i in range(5, 9)
    ] + [
        probe_result(user + " ok", [paris3], calls_text(paris3), outcome=ProbeOutcome.MASTERED),
        probe_result(user + " meh", [paris3], calls_text(paris3), outcome=ProbeOutcome.BORDERLINE),
        probe_result("Weather in Rome?", [call("get_weather", city="Oslo")], calls_text(call("get_weather", city="Madrid"))),
    ]
    ref = write_probe_results(str(tmp_path / "probe"), results)
    out_uri = str(tmp_path / "verdicts")

    class Crashy(GroundingJudge):
        calls = 0

        def judge(self, rs):
            Crashy.calls += 1
            if Crashy.calls == 3:
                raise KeyboardInterrupt  # killed during the third chunk
            return super().judge(rs)

    with pytest.raises(KeyboardInterrupt):
        list(run_judge(Crashy(), ref, out_uri, JudgeSpec(backend="grounding", unclearPolicy="drop"), round=2, batch_size=3))
    events = list(run_judge(GroundingJudge(), ref, out_uri, JudgeSpec(backend="grounding", unclearPolicy="drop"), round=2, batch_size=3))
    res = [e for e in events if isinstance(e, StageResult)][0]
    assert not [e for e in events if isinstance(e, ErrorInfo)]
    assert res.counts["resumed"] == 6 and res.counts["not_failed"] == 2 and res.counts["judged"] == 10
    assert (res.counts["label_wrong"], res.counts["model_wrong"], res.counts["both_wrong"], res.counts["both_acceptable"]) == (5, 4, 1, 0)
    assert res.counts["unclear"] == 0
    judged = list(open_dataset(res.outputs[0]).iter(JudgedSample))
    assert res.outputs[0].kind == "verdicts" and len(judged) == 10
    assert len({j.probe.sample.id for j in judged}) == 10
    relabelled = [j for j in judged if j.verdict.decision == Decision.LABEL_WRONG]
    for j in relabelled:
        s = j.probe.sample
        assert s.reference == [paris3] == j.verdict.corrected
        assert json.loads(s.meta["label_before_judge"]) == [{"name": "get_weather", "arguments": {"city": "Lyon", "days": 3}}]
        ev = s.lineage[-1]
        assert (ev.round, ev.stage, ev.action) == (2, "judge", "relabelled") and "Lyon" in ev.reason
    both_wrong = [j for j in judged if j.verdict.decision == Decision.BOTH_WRONG][0]
    assert not both_wrong.probe.sample.lineage  # composition decides (compose.bothWrong) and records why
    kept = [j for j in judged if j.verdict.decision == Decision.MODEL_WRONG][0]
    assert kept.probe.sample.reference == [paris3] and not kept.probe.sample.lineage
    # committed: a re-run is a no-op with the same counts
    again = [e for e in run_judge(GroundingJudge(), ref, out_uri, JudgeSpec(), round=2) if isinstance(e, StageResult)][0]
    assert again.outputs[0].content_hash == res.outputs[0].content_hash and again.counts["label_wrong"] == 5


def test_run_judge_reports_judge_errors_and_handles_no_failures(tmp_path):
    pr = probe_result("Weather in Paris", [call("get_weather", city="Paris")], "x")
    ref = write_probe_results(str(tmp_path / "probe"), [pr])
    judge = LLMJudge(ScriptedGenerator(lambda r, i: Exception("UNAVAILABLE: down")))
    events = list(run_judge(judge, ref, str(tmp_path / "v"), JudgeSpec(), round=1))
    res = [e for e in events if isinstance(e, StageResult)][0]
    errs = [e for e in events if isinstance(e, ErrorInfo)]
    assert res.counts["unclear"] == 1 and res.counts["errors"] == 1 and errs[0].code == "JUDGE_ERROR"
    ok = write_probe_results(str(tmp_path / "probe2"), [probe_result("x", [], "", outcome=ProbeOutcome.MASTERED)])
    res2 = [e for e in run_judge(GroundingJudge(), ok, str(tmp_path / "v2"), JudgeSpec(), round=1) if isinstance(e, StageResult)][0]
    assert res2.counts["judged"] == 0 and res2.outputs[0].record_count == 0


# ------------------------------------------------------------------------------ sampled candidates


def test_candidates_settle_unclear_verdicts_with_the_first_valid_fix():
    from looptool.services.inference.judge import CANDIDATE_REASON, CandidateSampler, settle_with_candidates

    user = "What's the weather in Paris for 3 days?"
    paris3 = call("get_weather", city="Paris", days=3)
    noisy = probe_result(user, [call("get_weather", city="Lyon", days=3)], calls_text(call("get_weather", city="Oslo", days=3)))
    hopeless = probe_result(user + " (2)", [call("get_weather", city="Lyon", days=3)], "<tool_call>{")
    settled_by_greedy = probe_result(user + " (3)", [paris3], calls_text(call("get_weather", city="Berlin", days=3)))
    answers = {
        # same as greedy (skipped), an ungrounded one, then the fix, then another fix (never used)
        noisy.sample.id: [noisy.prediction, calls_text(call("get_weather", city="Rome", days=3)), calls_text(paris3),
                          calls_text(call("get_weather", city="Paris", days=3, unit="celsius"))],
        hopeless.sample.id: ["", calls_text(call("get_weather", city="Rome", days=3))],
    }

    def script(req, i):
        sid = req.request_id.split(":", 1)[1]
        texts = answers[sid]
        return texts[i % len(texts)]

    gen = ScriptedGenerator(script)
    sampler = CandidateSampler(gen, n=4, temperature=0.9, max_tokens=40, round=3)
    results = [noisy, hopeless, settled_by_greedy]
    judge = GroundingJudge()
    first = judge.judge(results)
    assert [v.decision for v in first] == [Decision.BOTH_WRONG, Decision.BOTH_WRONG, Decision.MODEL_WRONG]
    verdicts, settled = settle_with_candidates(judge, results, first, sampler)
    assert settled == 1
    assert verdicts[0].decision == Decision.LABEL_WRONG and verdicts[0].corrected == [paris3]
    assert verdicts[0].reason.startswith(f"{CANDIDATE_REASON} 2/3 ") and verdicts[0].sample_id == noisy.sample.id
    assert "Oslo" in verdicts[0].reason  # why the greedy answer did not settle it
    assert verdicts[1].decision == Decision.BOTH_WRONG and verdicts[1] is first[1]
    assert verdicts[2] is first[2]
    # only the unsettled (both_wrong / unclear) ones were sampled, seeded per sample and round, with the spec's knobs
    assert [r.request_id for r in gen.requests] == [f"candidates:{noisy.sample.id}", f"candidates:{hopeless.sample.id}"]
    p = gen.requests[0].params
    assert (p.n, p.temperature, p.max_tokens) == (4, 0.9, 40)
    assert p.seed != gen.requests[1].params.seed and gen.requests[0].tools == noisy.sample.tools
    again = CandidateSampler(ScriptedGenerator(script), n=4, temperature=0.9, max_tokens=40, round=3)
    assert again.sample([noisy])[0] == sampler.sample([noisy])[0]
    assert settle_with_candidates(judge, results, first, None) == (first, 0)


def test_candidates_are_judged_by_the_llm_judge_too():
    from looptool.services.inference.judge import CandidateSampler, settle_with_candidates

    pr = probe_result("Weather in Paris", [call("get_weather", city="Rome")], "<tool_call>{")
    fix = calls_text(call("get_weather", city="Paris"))
    judge_gen = ScriptedGenerator(lambda r, i: verdict_json("label_wrong" if '"city": "Paris"' in r.messages[-1].content else "unclear"))
    judge = LLMJudge(judge_gen)
    first = judge.judge([pr])
    assert first[0].decision == Decision.UNCLEAR
    sampler = CandidateSampler(ScriptedGenerator(lambda r, i: fix), n=2)
    [v], settled = settle_with_candidates(judge, [pr], first, sampler)
    assert settled == 1 and v.decision == Decision.LABEL_WRONG and v.corrected == [call("get_weather", city="Paris")]


def test_run_judge_with_candidates_relabels_and_counts(tmp_path):
    from looptool.services.inference.judge import CandidateSampler

    user = "What's the weather in Paris for 3 days?"
    paris3 = call("get_weather", city="Paris", days=3)
    results = [probe_result(user + f" #{i}", [call("get_weather", city="Lyon", days=3)], "no call") for i in range(3)]
    ref = write_probe_results(str(tmp_path / "probe"), results)
    sampler = CandidateSampler(ScriptedGenerator(lambda r, i: calls_text(paris3)), n=2)
    spec = JudgeSpec(backend="grounding", candidates=2)
    events = list(run_judge(GroundingJudge(), ref, str(tmp_path / "v"), spec, round=1, batch_size=2, candidates=sampler))
    res = [e for e in events if isinstance(e, StageResult)][0]
    assert res.counts["label_wrong"] == 3 and res.counts["settled_by_candidate"] == 3
    judged = list(open_dataset(res.outputs[0]).iter(JudgedSample))
    assert all(j.probe.sample.reference == [paris3] and j.probe.prediction == "no call" for j in judged)
    assert all(j.probe.sample.lineage[-1].action == "relabelled" for j in judged)
    again = [e for e in run_judge(GroundingJudge(), ref, str(tmp_path / "v"), spec, round=1) if isinstance(e, StageResult)][0]
    assert again.counts["settled_by_candidate"] == 3  # counted from the committed verdicts
