"""Tiny random-initialised models of every supported architecture, made with transformers and
saved in fp16 safetensors with a small byte-level BPE tokenizer. HF loads the same folder in
float32 as the reference (so both sides start from the same fp16-rounded weights)."""

from __future__ import annotations

import os

VOCAB = 384

# name -> (config class name, kwargs). Covers GQA ratios 1/3/4, head_dim 64/128, untied and tied
# embeddings, QKV bias (Qwen2), q/k-norm (Qwen3), fused tensors (Phi-3), llama3 rope scaling, GPT-2.
ARCHS = {
    "llama_gqa3": ("LlamaConfig", dict(hidden_size=192, intermediate_size=256, num_hidden_layers=2,
                                       num_attention_heads=6, num_key_value_heads=2, head_dim=64,
                                       tie_word_embeddings=False)),
    "llama_mha_d128": ("LlamaConfig", dict(hidden_size=256, intermediate_size=384, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=128,
                                           tie_word_embeddings=True)),
    "llama3_rope": ("LlamaConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                        max_position_embeddings=1024, rope_theta=500000.0,
                                        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                          high_freq_factor=4.0, original_max_position_embeddings=64))),
    "qwen2": ("Qwen2Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True)),
    # q/k-norm, and heads wider than the model (q_dim 256 > hidden 128)
    "qwen3": ("Qwen3Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                  tie_word_embeddings=False)),
    # fused qkv_proj and gate_up_proj tensors
    "phi3": ("Phi3Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                tie_word_embeddings=False)),
    "mistral": ("MistralConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                      sliding_window=None)),
    "gpt2": ("GPT2Config", dict(n_embd=128, n_layer=2, n_head=2, n_positions=512)),
}
# Families the CPU backend runs and CUDA refuses by name (its kernels lack their ops so far): Gemma
# (GeGLU, the embedding scaled, RMSNorm weights stored as offsets from 1) and Gemma 2 (post-norms, a
# query scale of its own, soft-capped scores and logits; caps small enough here to bend them).
CPU_ONLY = {
    "gemma": ("GemmaConfig", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=32)),
    "gemma2": ("Gemma2Config", dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=48,
                                    query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                    final_logit_softcapping=3.0)),
}
# Wider than 1024: the CUDA backend's decode GEMMs then apply the MLP activation in a pass of its
# own rather than inside the down projection (the GPU tests use these too).
WIDE = {
    "llama_wide": ("LlamaConfig", dict(hidden_size=1152, intermediate_size=512, num_hidden_layers=2,
                                       num_attention_heads=18, num_key_value_heads=6, head_dim=64,
                                       tie_word_embeddings=False)),
    "gpt2_wide": ("GPT2Config", dict(n_embd=1152, n_layer=2, n_head=18, n_positions=512)),
}


def make_tokenizer(folder: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["The quick brown fox jumps over the lazy dog. " * 4, "Hello world, 0123456789!",
            "kvinfer computes attention over a key value cache, one token at a time."]
    tok.train_from_iterator(text * 20, trainer)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        f.write('{"eos_token": "<eos>", "chat_template": "{% for m in messages %}{{ m.role }}: {{ m.content }}\\n{% endfor %}'
                '{% if add_generation_prompt %}assistant:{% endif %}"}')


def make_model(name: str, folder: str, seed: int = 0) -> str:
    import torch
    import transformers

    cls_name, kwargs = {**ARCHS, **WIDE, **CPU_ONLY}[name]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cls_name)(vocab_size=VOCAB, eos_token_id=0, bos_token_id=0, **kwargs)
    # A wider init than the default 0.02 makes the logits peaked, so greedy choices are not near-ties.
    cfg.initializer_range = 0.1
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # q/k-norm weights start at 1: random ones show a q/k mix-up
        for n, p in model.named_parameters():
            if n.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 1.5)
            elif cls_name.startswith("Gemma") and n.endswith("norm.weight"):  # (offsets from 1, init 0)
                p.uniform_(-0.5, 0.5)
    os.makedirs(folder, exist_ok=True)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    make_tokenizer(folder)
    return folder


def hf_model(folder: str):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
