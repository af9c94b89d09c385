"""CPU GRPO trainer: the loss pieces, generation/log-prob consistency, and reward rising on a tiny task."""

from __future__ import annotations

import math

import pytest
import torch

from looptool.services.trainer.common import left_pad, lr_lambda, position_ids
from looptool.services.trainer.grpo import group_advantages, policy_loss
from looptool.services.trainer.sft import build_schedule


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("LOOPTOOL_TRAINER__TORCH_THREADS", "1")  # deterministic and immune to a busy machine


def test_group_advantages_normalise_within_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    g1 = a[:4]
    assert g1[0] > 0 and (g1[1:] < 0).all()
    assert abs(float(g1.mean())) < 1e-6
    assert torch.allclose(g1.std(unbiased=True), torch.tensor(1.0), atol=1e-4)
    assert torch.equal(a[4:], torch.zeros(4))  # a flat group carries no signal


def test_policy_loss_asymmetric_clip():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]]))  # ratio vs old logp 0
    old = torch.zeros_like(logp)
    mask = torch.ones_like(logp)
    # positive advantage: ratio 1.5 clipped at 1 + clipHigh = 1.28
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), mask, 0.2, 0.28, denom=4.0)
    expected = -(1.28 + 0.5 + 1.28 + 0.5) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert st["clipped"] == 2.0
    # negative advantage: ratio 0.5 clipped at 1 - clipLow = 0.8 (pessimistic max)
    loss, _ = policy_loss(logp, old, torch.tensor([-1.0]), mask, 0.2, 0.28, denom=4.0)
    expected = (1.5 + 0.8 + 1.5 + 0.8) / 4
    assert math.isclose(float(loss), expected, rel_tol=1e-5)


def test_policy_loss_gradient_is_vanilla_pg_on_policy_and_k3_kl():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([2.0]), mask, 0.2, 0.28, denom=2.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0, -1.0, 0.0]]))  # -A/denom on real tokens only
    # k3: exp(ref-logp) - (ref-logp) - 1 >= 0, zero when equal
    lp = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-1.0, -2.0]])
    loss, st = policy_loss(lp, lp, torch.tensor([0.0]), torch.ones_like(lp), 0.2, 0.28, 1.0, ref_logp=ref, kl_coef=1.0)
    d = -1.0
    assert math.isclose(st["kl_sum"], math.exp(d) - d - 1, rel_tol=1e-5)


def test_lr_schedule_warmup_then_decay():
    f = lr_lambda("cosine", 100, 10, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(99) < 0.12 and f(55) < f(30)
    g = lr_lambda("linear", 10, 0)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5)
    assert lr_lambda("constant", 10, 2)(7) == 1.0


def test_left_pad_positions():
    ids, mask = left_pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_sft_schedule_covers_epochs_deterministically():
    lengths = [5, 50, 6, 49, 7, 48, 8, 47, 9, 46]
    s1 = build_schedule(lengths, 2.5, 4, seed=3)
    assert s1 == build_schedule(lengths, 2.5, 4, seed=3)
    flat = [i for b in s1 for i in b]
    assert len(flat) == 25 and all(flat.count(i) >= 2 for i in range(10))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model + tokenizer built from the toy task's texts (no download)."""
    from looptool.services.trainer.data import corpus_texts, eos_ids, load_examples, tokenize_examples
    from looptool.services.trainer.modeling import load_model
    from looptool.services.trainer.toy import toy_rows
    from looptool.shared.tiny_model import TinyModelSpec, build_tiny_model

    exs = load_examples(toy_rows(4))
    d = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", corpus_texts(exs), TinyModelSpec(400, 64, 192, 2, 2, seed=0))
    model, tok = load_model(d)
    tokenize_examples(exs, tok, eos_ids(tok, model)[0])
    return model, tok, exs


def test_rollout_logprobs_match_unpadded_forward(tiny):
    """Left padding + explicit positions + the shared-prefix KV cache: training log-probs equal a
    plain forward of each sequence on its own."""
    from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer, grouped_token_logprobs, token_logprobs

    model, tok, exs = tiny
    exs = [exs[0], exs[1]]
    exs[1].prompt_ids = exs[1].prompt_ids[3:]  # different prompt lengths → real left padding
    g = GRPOTrainer(model, tok, exs, GRPOConfig(prompts_per_step=2, group_size=3, max_response_tokens=12))
    ro = g.rollout(0, seed=5)
    assert ro.resp_ids.shape[0] == 6 and ro.input_ids.shape[0] == 2 and len(ro.texts) == 6
    with torch.no_grad():
        lp, _ = grouped_token_logprobs(model, ro.input_ids, ro.prompt_mask, ro.resp_ids, ro.resp_mask, 3, 1.0)
        lp_full, _ = token_logprobs(
            model, ro.input_ids.repeat_interleave(3, 0), ro.prompt_mask.repeat_interleave(3, 0), ro.resp_ids, ro.resp_mask, 1.0
        )
        assert torch.allclose(lp * ro.resp_mask, lp_full * ro.resp_mask, atol=1e-4)
        for i in (0, 4):
            p = ro.input_ids[i // 3][ro.prompt_mask[i // 3].bool()]
            r = ro.resp_ids[i][ro.resp_mask[i].bool()]
            logits = model(torch.cat([p, r])[None]).logits[0, len(p) - 1 : -1]
            ref = torch.log_softmax(logits, -1).gather(-1, r[:, None])[:, 0]
            assert torch.allclose(ref, lp[i][ro.resp_mask[i].bool()], atol=1e-4)


def test_shared_prefix_generation_draws_the_same_samples(tiny):
    """Prefill-once generation = plain num_return_sequences sampling, token for token."""
    from transformers import GenerationConfig

    from looptool.services.trainer.grpo import generate

    model, tok, exs = tiny
    prompts = [exs[0].prompt_ids, exs[1].prompt_ids[2:]]
    torch.manual_seed(11)
    _, resp, rm, ids, mask = generate(model, tok, prompts, 4, 10, 1.0)
    torch.manual_seed(11)
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=10, num_return_sequences=4,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    plain = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)[:, ids.shape[1] :]
    assert torch.equal(plain[:, : resp.shape[1]] * rm, resp * rm)


def test_sampling_follows_the_policy(tiny):
    """Samples come from softmax(logits/T): mean −log p of sampled tokens ≈ mean entropy."""
    from looptool.services.trainer.grpo import generate, token_logprobs

    model, tok, exs = tiny
    torch.manual_seed(0)
    texts, resp, rm, pid, pm = generate(model, tok, [exs[0].prompt_ids] * 4, 16, 8, 1.0)
    with torch.no_grad():
        lp, ent = token_logprobs(model, pid.repeat_interleave(16, 0), pm.repeat_interleave(16, 0), resp, rm, 1.0, with_entropy=True)
    m = rm.float()
    nll, h = float(-(lp * m).sum() / m.sum()), float((ent * m).sum() / m.sum())
    assert abs(nll - h) < 0.25 * max(h, 0.2)


def test_update_moves_logprobs_along_the_advantage(tiny):
    from looptool.services.trainer.common import make_optimizer
    from looptool.services.trainer.grpo import GRPOConfig, GRPOTrainer, grouped_token_logprobs

    model, tok, exs = tiny
    import copy

    model = copy.deepcopy(model)
    g = GRPOTrainer(model, tok, exs, GRPOConfig(prompts_per_step=2, group_size=4, max_response_tokens=10))
    ro = g.rollout(0, seed=1)
    adv = torch.tensor([1.0, -1.0] * 4)
    with torch.no_grad():
        before, _ = grouped_token_logprobs(model, ro.input_ids, ro.prompt_mask, ro.resp_ids, ro.resp_mask, 4, 1.0)
    opt = make_optimizer(model, 1e-3, 0.0)
    lp, _ = grouped_token_logprobs(model, ro.input_ids, ro.prompt_mask, ro.resp_ids, ro.resp_mask, 4, 1.0)
    loss, _ = policy_loss(lp, lp.detach(), adv, ro.resp_mask, 0.2, 0.28, float(ro.resp_mask.sum()))
    loss.backward()
    opt.step()
    with torch.no_grad():
        after, _ = grouped_token_logprobs(model, ro.input_ids, ro.prompt_mask, ro.resp_ids, ro.resp_mask, 4, 1.0)
    delta = ((after - before) * ro.resp_mask).sum(1)
    assert float((adv * delta).sum()) > 0


def test_reward_rises_on_tiny_task(tmp_path):
    """SFT warm start, then 80 GRPO steps on 4 prompts: the reward of the last 10 steps clearly
    beats the first 10, and greedy accuracy does not drop (tiny Llama, 64 wide, 2 layers)."""
    import json

    from looptool.services.trainer.runner import parse_job, run_training
    from looptool.services.trainer.toy import TINY_BASE, TINY_CONFIG, commit_toy_dataset

    ref = commit_toy_dataset((tmp_path / "ds").as_uri(), 4)
    job = parse_job(
        {"run_id": "rise", "dataset": ref.model_dump(), "base_checkpoint_uri": TINY_BASE, "output_prefix": (tmp_path / "out").as_uri(), "config": TINY_CONFIG}
    )
    events = []
    result = run_training(job, workdir=tmp_path / "wd", emit=events.append)
    curve = [result.metrics[f"reward_step_{i}"] for i in range(1, 81)]
    first, last = sum(curve[:10]) / 10, sum(curve[-10:]) / 10
    assert last - first >= 0.1, (first, last, curve)
    assert result.metrics["reward_last5"] > result.metrics["reward_first5"]
    assert result.counts["sft_steps"] == 70 and result.counts["grpo_steps"] == 80
    # progress: every SFT and GRPO step reported, with the GRPO metrics
    grpo = [e for e in events if e.metrics.get("phase") == 1.0]
    assert len(grpo) == 80 and {"reward_mean", "reward_std", "loss", "kl", "tokens_per_second"} <= set(grpo[-1].metrics)
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["reward_curve"] == pytest.approx(curve, abs=1e-4)
    assert (tmp_path / "out" / "model" / "_artifact.json").exists()

    # the uploaded model is a plain HF directory that answers better greedily than the SFT start
    from looptool.services.trainer.data import eos_ids, load_examples, tokenize_examples
    from looptool.services.trainer.grpo import generate
    from looptool.services.trainer.modeling import load_model
    from looptool.services.trainer.toy import toy_rows
    from looptool.shared.reward import score_response

    def greedy_acc(model_dir):
        model, tok = load_model(model_dir)
        exs = load_examples(toy_rows(4))
        tokenize_examples(exs, tok, eos_ids(tok, model)[0])
        texts, *_ = generate(model, tok, [e.prompt_ids for e in exs], 1, 32, None)
        return sum(score_response(t, e.reference).correct for t, e in zip(texts, exs)) / len(exs)

    after = greedy_acc(tmp_path / "out" / "model" / "files")
    before = greedy_acc(tmp_path / "out" / "checkpoints" / "grpo-000000" / "files" / "model")
    assert after >= before
