"""Tiny random models and a tiny fast tokenizer, built in-process (no files, no network)."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "Question: Where would you put a plate after washing it? Answer choices: cupboard table "
    "sink restaurant kitchen. Answer with the text of the correct choice.",
    "Premise: A man is playing a guitar on stage. Hypothesis: A person performs music. Does the "
    "premise entail the hypothesis? Answer entailment, neutral or contradiction.",
    "Sam had 12.5 apples and gave 3 to Ann. How many apples does Sam have now? 1,000 e-mail "
    "don't café naïve über 42 + 7 = 49 (a) (b) (c) (d) (e)",
]


# Ten memorisable CQA records (question, choices, answer) built from CORPUS words.
CQA_ITEMS = [
    ("Where would you put a plate after washing it?",
     ["cupboard", "table", "sink", "restaurant", "kitchen"], "cupboard"),
    ("Where does a man play a guitar?", ["stage", "sink", "table", "kitchen", "cupboard"], "stage"),
    ("What does Sam give to Ann?", ["apples", "guitar", "plate", "music", "table"], "apples"),
    ("Where is food made?", ["kitchen", "stage", "restaurant", "sink", "table"], "kitchen"),
    ("Where do you wash a plate?", ["sink", "stage", "cupboard", "table", "music"], "sink"),
    ("Where do people eat out?", ["restaurant", "sink", "stage", "cupboard", "apples"],
     "restaurant"),
    ("What does a person perform?", ["music", "plate", "table", "kitchen", "sink"], "music"),
    ("Where do you put a plate to eat?", ["table", "music", "stage", "apples", "sink"], "table"),
    ("Where are apples kept?", ["cupboard", "guitar", "stage", "music", "sink"], "cupboard"),
    ("Who performs on stage?", ["man", "plate", "sink", "table", "apples"], "man"),
]  # fmt: skip


@functools.cache
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


# Shared by the decoder-only models below (Llama; Qwen2, the teacher's, with q/k/v biases).
_DECODER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def tiny_llama(seed: int = 0, vocab: int = 400):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **_DECODER)).eval()


def tiny_qwen2(seed: int = 0, vocab: int = 400):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **_DECODER)).eval()


def tiny_gpt2(seed: int = 0, vocab: int = 400):
    """Learned absolute positions (GPT-2 style)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                     pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def tiny_t5(seed: int = 0, vocab: int = 400):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        n_positions=256,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(cfg).eval()


def loaded(family: str = "llama", seed: int = 0):
    from explain.models import prepare

    build = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2, "t5": tiny_t5}[family]
    return prepare(f"tiny-{family}", build(seed), tiny_tokenizer(), torch.device("cpu"))
