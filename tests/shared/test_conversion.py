"""Dialogues → samples → verl Parquet: one deterministic transformation."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from looptool.shared.conversion import (
    convert_dataset,
    dialog_to_samples,
    dialogs_to_samples,
    samples_to_verl_rows,
    split_of,
    write_verl_parquet,
)
from looptool.shared.prompt import sample_chat, target_text
from looptool.shared.records import Dialog, Message, Tool, ToolCall
from looptool.shared.storage import open_dataset, writer_for_uri
from looptool.shared.verl_format import VERL_COLUMNS, ground_truth_calls

WEATHER = Tool(
    name="get_weather",
    description="Get the current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]},
)
FLIGHT = Tool(
    name="book_flight",
    description="Book a flight between two airports on a date.",
    parameters={
        "type": "object",
        "properties": {"origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"}},
        "required": ["origin", "destination", "date"],
    },
)
AT = "2026-01-01T00:00:00+00:00"


def hand_dialog() -> Dialog:
    c1 = ToolCall(name="get_weather", arguments={"city": "Paris"}, id="call_0")
    c2 = ToolCall(name="get_weather", arguments={"city": "Tokyo", "unit": "celsius"}, id="call_1")
    c3 = ToolCall(name="book_flight", arguments={"origin": "SFO", "destination": "JFK", "date": "2026-03-02"}, id="call_2")
    msgs = [
        Message(role="user", content="What's the weather in Paris, and in Tokyo in celsius?"),  # 0
        Message(role="assistant", tool_calls=[c1, c2]),  # 1 parallel
        Message(role="tool", name="get_weather", tool_call_id="call_0", content='{"temp": 12}'),  # 2
        Message(role="tool", name="get_weather", tool_call_id="call_1", content='{"temp": 18}'),  # 3
        Message(role="assistant", content="Paris is 12 degrees and Tokyo 18 degrees celsius."),  # 4 summary
        Message(role="user", content="Book me a flight from SFO to JFK."),  # 5
        Message(role="assistant", content="Sure, on which date should I book the flight?"),  # 6 clarification
        Message(role="user", content="On 2026-03-02."),  # 7
        Message(role="assistant", tool_calls=[c3]),  # 8 call
        Message(role="tool", name="book_flight", tool_call_id="call_2", content='{"booking_id": "B-1"}'),  # 9
        Message(role="assistant", content="Booked: B-1."),  # 10 summary
        Message(role="user", content="Write me a haiku about autumn."),  # 11
        Message(role="assistant", content="Sorry, none of my tools can write poems."),  # 12 no tool
    ]
    return Dialog(id="d-hand", messages=msgs, tools=[WEATHER, FLIGHT], plan={"turn_kinds": {"12": "no_tool"}}, meta={"date": "2026-02-01"})


def test_hand_written_dialogue_yields_exactly_the_expected_samples():
    d = hand_dialog()
    samples = dialog_to_samples(d, round=2, at=AT)
    got = [(s.meta["turn"], s.meta["kind"], [c.key() for c in s.reference], s.reference_text, len(s.context)) for s in samples]
    assert got == [
        ("1", "parallel", ['get_weather{"city":"Paris"}', 'get_weather{"city":"Tokyo","unit":"celsius"}'], "", 1),
        ("4", "summary", [], "Paris is 12 degrees and Tokyo 18 degrees celsius.", 4),
        ("6", "clarification", [], "Sure, on which date should I book the flight?", 6),
        ("8", "call", ['book_flight{"date":"2026-03-02","destination":"JFK","origin":"SFO"}'], "", 8),
        ("10", "summary", [], "Booked: B-1.", 10),
        ("12", "no_tool", [], "Sorry, none of my tools can write poems.", 12),
    ]
    for s in samples:
        assert s.id == s.content_id() and s.id.startswith("s-")
        assert [t.name for t in s.tools] == ["get_weather", "book_flight"]
        assert all(c.id == "" for c in s.reference)  # call ids are transport detail
        assert s.meta["dialog_id"] == "d-hand" and s.meta["date"] == "2026-02-01"
        (ev,) = s.lineage
        assert (ev.round, ev.stage, ev.action, ev.parent_id, ev.at) == (2, "convert", "created", "d-hand", AT)
    # the prompt: system (date + tools) then the context; the last user turn is the request
    chat = sample_chat(samples[3])
    assert chat[0]["role"] == "system" and "Current date: 2026-02-01" in chat[0]["content"] and "<tools>" in chat[0]["content"]
    assert chat[-1] == {"role": "user", "content": "On 2026-03-02."}
    assert "<tool_response>" in chat[3]["content"] and '{"temp": 18}' in chat[3]["content"]
    assert target_text(samples[0]).count("<tool_call>") == 2
    # stable: same input → same ids and bytes
    again = dialog_to_samples(hand_dialog(), round=2, at=AT)
    assert [s.model_dump() for s in again] == [s.model_dump() for s in samples]
    # include_kinds filters
    assert [s.meta["kind"] for s in dialog_to_samples(d, at=AT, include_kinds={"call", "parallel"})] == ["parallel", "call"]


def test_duplicates_kept_once_and_split_is_deterministic():
    counts: dict[str, int] = {}
    d1, d2 = hand_dialog(), hand_dialog()
    d2.id = "d-other"
    samples = list(dialogs_to_samples([d1, d2], at=AT, counts=counts))
    assert counts["samples"] == 6 and counts["duplicates"] == 6 and counts["kind.summary"] == 2
    assert split_of("x", 0) == "train" and split_of("x", 1) == "heldout"
    ids = [f"s-{i}" for i in range(2000)]
    held = sum(split_of(i, 0.2) == "heldout" for i in ids)
    assert 320 < held < 480
    assert [split_of(i, 0.2) for i in ids] == [split_of(i, 0.2) for i in ids]
    train, heldout = samples_to_verl_rows(samples, 0.5)
    assert len(train) + len(heldout) == 6
    for rows, split in ((train, "train"), (heldout, "heldout")):
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
        assert all(r["extra_info"]["split"] == split for r in rows)


def test_convert_dataset_parquet_has_verl_columns_and_is_idempotent(tmp_path):
    base = (tmp_path / "store").as_uri()
    w = writer_for_uri(f"{base}/dialogs", kind="dialogs")
    for i in range(5):
        d = hand_dialog()
        d.id = f"d-{i}"
        d.messages[0].content += f" (trip {i})"
        w.write(d)
    src = w.commit()
    res = convert_dataset(src, f"{base}/conv", heldout_fraction=0.3, round=1)
    assert res.counts["samples"] == 30 and res.counts["train"] + res.counts["heldout"] == 30
    assert res.samples.record_count == 30 and res.train.format == "parquet"
    ds = open_dataset(res.train)
    part = ds.manifest["parts"][0]["key"]
    table = pq.read_table(tmp_path / "store" / "conv" / "train" / part)
    assert tuple(table.column_names) == VERL_COLUMNS
    row = table.to_pylist()[0]
    assert row["reward_model"]["style"] == "rule" and row["prompt"][0]["role"] == "system"
    assert isinstance(ground_truth_calls(row["reward_model"]["ground_truth"]), list)
    assert json.loads(row["extra_info"]["tools"])[0]["name"] == "get_weather"
    # idempotent + deterministic: a second conversion returns the committed refs
    again = convert_dataset(src, f"{base}/conv", heldout_fraction=0.3, round=1)
    assert again.samples.content_hash == res.samples.content_hash and again.train.content_hash == res.train.content_hash
    # a fresh conversion to another prefix gives byte-identical content
    other = convert_dataset(src, f"{base}/conv2", heldout_fraction=0.3, round=1)
    assert other.samples.content_hash == res.samples.content_hash
    assert other.heldout.content_hash == res.heldout.content_hash
    # plain single-file writer for verl
    n = write_verl_parquet(open_dataset(res.samples).iter(__import__("looptool.shared.records", fromlist=["Sample"]).Sample), str(tmp_path / "t.parquet"))
    assert n == 30 and tuple(pq.read_table(tmp_path / "t.parquet").column_names) == VERL_COLUMNS


@pytest.mark.parametrize("fraction", [0.0, 0.02])
def test_fraction_edges(fraction):
    train, held = samples_to_verl_rows(dialog_to_samples(hand_dialog(), at=AT), fraction)
    assert len(train) + len(held) == 6


def test_cli_convert(tmp_path, capsys):
    from looptool.cli import main

    base = (tmp_path / "store").as_uri()
    w = writer_for_uri(f"{base}/dialogs", kind="dialogs")
    w.write(hand_dialog())
    w.commit()
    assert main(["data", "convert", f"{base}/dialogs", f"{base}/conv", "--heldout-fraction", "0.5", "--round", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["counts"]["samples"] == 6 and out["counts"]["train"] + out["counts"]["heldout"] == 6
    assert [o["kind"] for o in out["outputs"]] == ["samples", "verl", "verl"]
    assert main(["data", "convert", f"{base}/dialogs", f"{base}/conv2", "--kinds", "call,parallel"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["counts"]["samples"] == 2
    assert main(["data", "convert", f"{base}/dialogs", f"{base}/conv3", "--heldout-fraction", "1.5"]) == 2


def test_empty_timestamp_gives_byte_identical_samples():
    a = dialog_to_samples(hand_dialog(), at="")
    b = dialog_to_samples(hand_dialog(), at="")
    assert [s.model_dump() for s in a] == [s.model_dump() for s in b] and a[0].lineage[0].at == ""
