"""Build a small causal LM from scratch, locally (no download): a byte-level BPE tokenizer trained on
the project's own corpus, a ChatML chat template, and a randomly initialised Llama-architecture model.

It is a real ``transformers`` model directory: every backend loads it like any other model. The demo
trains it (SFT warm start, then GRPO) on the synthesized data; tests use it for plumbing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from looptool.shared.loop.manifest import ModelRef

_SIZES = ModelRef.model_fields  # the manifest's baseModel.tiny* own the default sizes

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
# Structural markers get their own ids (not special: decoding keeps them in the text).
MARKER_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]


@dataclass
class TinyModelSpec:
    vocab_size: int = _SIZES["tinyVocabSize"].default
    hidden_size: int = _SIZES["tinyHiddenSize"].default
    intermediate_size: int = 3 * _SIZES["tinyHiddenSize"].default  # as modeling.tiny_spec derives them
    num_layers: int = _SIZES["tinyLayers"].default
    num_heads: int = _SIZES["tinyHiddenSize"].default // 32
    max_positions: int = 2048
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    # Merges may cross spaces (no GPT-2 regex split), so the prompt's fixed boilerplate (instruction,
    # tool JSON, call syntax) collapses into few long tokens: ~5x shorter sequences than a GPT-2 style
    # split, which is what makes CPU training of a from-scratch model feasible. Digits stay single
    # tokens, so argument values are copied digit by digit.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        max_token_length=48,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(MARKER_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(out_dir: str | Path, corpus: Iterable[str], spec: TinyModelSpec | None = None) -> Path:
    """Train a tokenizer on ``corpus``, initialise a model, save both to ``out_dir`` (atomically)."""
    import os
    import shutil
    import tempfile

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    texts = list(corpus) + [CHAT_TEMPLATE, *MARKER_TOKENS]
    tokenizer = train_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "looptool_model.json").write_text(json.dumps({"kind": "tiny", "spec": asdict(spec)}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
