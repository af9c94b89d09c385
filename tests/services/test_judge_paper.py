"""The judge as the paper specifies it: verdicts carry an error analysis and the correct approach
(LLM parse, grounding rule), both_wrong distinct from unclear, a panel of judges that needs a
strict majority, no self-judging without consent, and the analysis reaching EDDE's prompt."""

from __future__ import annotations

import contextlib
import json

import pytest

from looptool.services.expander.llm_drafts import llm_prompt
from looptool.services.expander.seeds import seed_from_judged
from looptool.services.inference.judge import GroundingJudge, LLMJudge, PanelJudge, judge_messages, parse_verdict, run_judge
from looptool.shared.loop.manifest import JudgeSpec, ManifestError, parse_round
from looptool.shared.proto_convert import verdict_from_pb, verdict_to_pb
from looptool.shared.records import (
    Decision,
    JudgedSample,
    Message,
    ProbeOutcome,
    ProbeResult,
    Sample,
    StageResult,
    ToolCall,
    Verdict,
)
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.toolcall_format import render_tool_calls

from support.inference import FLIGHT, WEATHER, ScriptedGenerator


def call(name, **args):
    return ToolCall(name=name, arguments=args)


def probe_result(user: str, label: list[ToolCall], prediction: str) -> ProbeResult:
    s = Sample(context=[Message(role="user", content=user)], tools=[WEATHER, FLIGHT], reference=label).with_id()
    return ProbeResult(sample=s, prediction=prediction, outcome=ProbeOutcome.FAILED)


def answer(decision: str, analysis: str = "", approach: str = "", reason: str = "r") -> str:
    return json.dumps({"decision": decision, "reason": reason, "analysis": analysis, "correct_approach": approach})


PARIS = call("get_weather", city="Paris")
ROME = call("get_weather", city="Rome")


# ------------------------------------------------------------------------------ parse / LLM judge


def test_parser_reads_analysis_and_correct_approach_and_the_papers_wording():
    p = parse_verdict(answer("both_wrong", "the label names Rome, the prediction Oslo", "call get_weather with Paris"))
    assert p.ok and p.decision == Decision.BOTH_WRONG
    assert p.analysis == "the label names Rome, the prediction Oslo" and p.correct_approach == "call get_weather with Paris"
    # the paper's four outcomes, in its words
    for words, d in (("label incorrect", Decision.LABEL_WRONG), ("prediction incorrect", Decision.MODEL_WRONG),
                     ("both correct", Decision.BOTH_ACCEPTABLE), ("Both-Incorrect", Decision.BOTH_WRONG)):
        assert parse_verdict(json.dumps({"decision": words})).decision == d
    # optional fields: absent or null = empty; another type = a parse error (never an exception)
    assert parse_verdict('{"decision": "unclear", "analysis": null}').analysis == ""
    bad = parse_verdict('{"decision": "model_wrong", "correct_approach": ["x"]}')
    assert not bad.ok and "correct_approach" in bad.error


def test_llm_judge_prompt_asks_for_analysis_approach_and_both_wrong():
    body = judge_messages(probe_result("Weather in Paris", [ROME], render_tool_calls([PARIS])))[-1].content
    assert '"analysis"' in body and '"correct_approach"' in body
    assert "both_wrong" in body and "unclear: you cannot tell" in body


def test_llm_judge_verdict_carries_analysis_and_approach():
    pr = probe_result("Weather in Paris", [ROME], render_tool_calls([PARIS]))
    gen = ScriptedGenerator(lambda r, i: answer("label_wrong", "the label uses Rome; the user said Paris", "get_weather(city=Paris)"))
    [v] = LLMJudge(gen).judge([pr])
    assert v.decision == Decision.LABEL_WRONG and v.corrected == [PARIS]
    assert v.analysis == "the label uses Rome; the user said Paris" and v.correct_approach == "get_weather(city=Paris)"
    # they travel over gRPC with the verdict
    back = verdict_from_pb(verdict_to_pb(v))
    assert (back.analysis, back.correct_approach, back.decision) == (v.analysis, v.correct_approach, v.decision)


# ------------------------------------------------------------------------------ grounding rule


def test_grounding_judge_fills_analysis_and_approach_from_its_rule():
    user = "What's the weather in Paris?"
    label_wrong = probe_result(user, [ROME], render_tool_calls([PARIS]))
    model_wrong = probe_result(user, [PARIS], render_tool_calls([call("get_weather", city="Berlin")]))
    both_wrong = probe_result(user, [ROME], render_tool_calls([call("get_weather", city="Oslo")]))
    text_label = probe_result(user, [], render_tool_calls([call("get_weather", city="Oslo")]))
    vs = GroundingJudge().judge([label_wrong, model_wrong, both_wrong, text_label])
    assert [v.decision for v in vs] == [Decision.LABEL_WRONG, Decision.MODEL_WRONG, Decision.BOTH_WRONG, Decision.UNCLEAR]
    assert "Rome" in vs[0].analysis and 'get_weather(city="Paris")' in vs[0].correct_approach
    assert "Berlin" in vs[1].analysis and 'get_weather(city="Paris")' in vs[1].correct_approach
    assert "Rome" in vs[2].analysis and "Oslo" in vs[2].analysis and "from the conversation" in vs[2].correct_approach
    assert "text" in vs[3].analysis and vs[3].correct_approach == ""  # the rule cannot judge a text label


def test_run_judge_stores_analysis_with_the_verdict(tmp_path):
    pr = probe_result("What's the weather in Paris?", [ROME], render_tool_calls([PARIS]))
    w = writer_for_uri(str(tmp_path / "probe"), kind="probe_results")
    w.write(pr)
    ref = w.commit()
    events = list(run_judge(GroundingJudge(), ref, str(tmp_path / "v"), JudgeSpec(), round=1))
    res = [e for e in events if isinstance(e, StageResult)][0]
    [j] = list(open_dataset(res.outputs[0]).iter(JudgedSample))
    assert j.verdict.analysis and j.verdict.correct_approach
    assert "both_wrong" in res.counts


# ------------------------------------------------------------------------------ panel


def scripted(decision: str, analysis: str = ""):
    return LLMJudge(ScriptedGenerator(lambda r, i: answer(decision, analysis)))


def panel(*members: tuple[str, LLMJudge]) -> PanelJudge:
    opened: list[str] = []

    def opener(name, judge):
        @contextlib.contextmanager
        def cm():
            opened.append(name)
            yield judge
        return cm

    p = PanelJudge([(name, opener(name, j)) for name, j in members])
    p.opened = opened  # type: ignore[attr-defined]
    return p


def test_panel_needs_a_strict_majority():
    pr = probe_result("Weather in Paris", [ROME], render_tool_calls([PARIS]))
    p = panel(("a", scripted("label_wrong", "a says Rome is wrong")), ("b", scripted("model_wrong")),
              ("c", scripted("label_wrong", "c says so too")))
    [v] = p.judge([pr])
    assert v.decision == Decision.LABEL_WRONG and (v.votes, v.total_votes) == (2, 3)
    assert v.corrected == [PARIS] and v.analysis == "a says Rome is wrong"  # the first agreeing judge's
    assert v.reason.startswith("panel 2/3 (a, c)") and json.loads(v.raw) == {"a": "label_wrong", "b": "model_wrong", "c": "label_wrong"}
    assert p.opened == ["a", "b", "c"]  # each member opened (its model leased) in turn
    # a split panel cannot tell: unclear, not the plurality
    [split] = panel(("a", scripted("label_wrong")), ("b", scripted("model_wrong")), ("c", scripted("both_wrong"))).judge([pr])
    assert split.decision == Decision.UNCLEAR and split.reason.startswith("no panel majority")
    [tie] = panel(("a", scripted("model_wrong")), ("b", scripted("both_wrong"))).judge([pr])
    assert tie.decision == Decision.UNCLEAR and (tie.votes, tie.total_votes) == (1, 2)
    # a judge whose model fails abstains; the others still need a majority of the whole panel
    down = LLMJudge(ScriptedGenerator(lambda r, i: Exception("UNAVAILABLE: down")))
    [v2] = panel(("a", scripted("model_wrong")), ("b", scripted("model_wrong")), ("down", down)).judge([pr])
    assert v2.decision == Decision.MODEL_WRONG and (v2.votes, v2.total_votes) == (2, 3)
    [v3] = panel(("a", scripted("model_wrong")), ("d1", down), ("d2", down)).judge([pr])
    assert v3.decision == Decision.UNCLEAR
    with pytest.raises(ValueError):
        PanelJudge([])


# ------------------------------------------------------------------------------ self-judging


def manifest(judge: dict) -> dict:
    return {
        "apiVersion": "looptool.io/v1alpha1", "kind": "LoopRound", "metadata": {"name": "r1"},
        "spec": {"baseModel": {"uri": "s3://models/qwen3-8b"}, "toolset": {"file": "tools.json"}, "judge": judge},
    }


def test_llm_judge_needs_a_model_other_than_the_policy():
    with pytest.raises(ManifestError) as e:
        parse_round(manifest({"backend": "llm"}))
    msg = str(e.value)
    assert "\n" not in msg and "spec.judge.model" in msg and "allowSelfJudge" in msg
    with pytest.raises(ManifestError, match=r"spec\.judge\.model 's3://models/qwen3-8b' is the policy"):
        parse_round(manifest({"backend": "llm", "model": "s3://models/qwen3-8b"}))
    with pytest.raises(ManifestError, match="is the policy"):
        parse_round(manifest({"backend": "llm", "models": ["s3://models/qwen3-32b", "s3://models/qwen3-8b", "s3://x"]}))
    assert parse_round(manifest({"backend": "llm", "allowSelfJudge": True})).spec.judge.allowSelfJudge
    assert parse_round(manifest({"backend": "llm", "model": "s3://models/qwen3-32b"})).spec.judge.model.endswith("32b")
    panel_spec = parse_round(manifest({"backend": "llm", "models": ["s3://a", "s3://b", "s3://c"]})).spec.judge
    assert panel_spec.models == ["s3://a", "s3://b", "s3://c"]
    # the default backend needs no model; naming one selects the llm judge; a disabled judge needs none
    assert parse_round(manifest({})).spec.judge.backend == "grounding"
    assert parse_round(manifest({"model": "s3://models/qwen3-32b"})).spec.judge.backend == "llm"
    off = manifest({"enabled": False, "backend": "llm"})
    off["spec"]["expand"] = {"factor": 0}
    assert not parse_round(off).spec.judge.enabled


# ------------------------------------------------------------------------------ into EDDE


def test_analysis_and_approach_reach_the_expansion_prompt():
    pr = probe_result("Weather in Paris", [PARIS], render_tool_calls([ROME]))
    v = Verdict(sample_id=pr.sample.id, decision=Decision.MODEL_WRONG, reason="short",
                analysis="the model swapped the city for one it saw earlier", correct_approach="copy the city the user names")
    seed, why = seed_from_judged(JudgedSample(probe=pr, verdict=v))
    assert seed is not None and not why
    text = llm_prompt(seed, "a different city")
    assert "the model swapped the city for one it saw earlier" in text
    assert "## The correct approach\ncopy the city the user names" in text
    # no analysis: the reason stands in, and no empty approach section
    seed2, _ = seed_from_judged(JudgedSample(probe=pr, verdict=v.model_copy(update={"analysis": "", "correct_approach": ""})))
    assert seed2 is not None
    text2 = llm_prompt(seed2, "a different city")
    assert "(the judge's error analysis)\nshort" in text2 and "## The correct approach" not in text2
    # both_wrong has no correct side to vary
    bw = JudgedSample(probe=pr, verdict=v.model_copy(update={"decision": Decision.BOTH_WRONG}))
    assert seed_from_judged(bw) == (None, "not_error")
