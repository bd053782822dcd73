"""PromptEncoder against diffusers' encode_prompt and A1111's weighting, chunking and caching."""
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from fixtures import tiny_configs
from stablekit.components import Components
from stablekit.errors import StablekitError
from stablekit.formats.archs import tokenizers_for
from stablekit.prompts.encode import PromptEncoder

PLAIN = "a photo of a cat, red hat"
LONG = ", ".join(["a small cat"] * 30)  # 119 tokens: two chunks


def text_components(arch: str, seed: int = 0) -> Components:
    """Components with only the tiny text encoder(s) and tokenizer(s) of tests/fixtures.py's
    configs (no UNet/VAE: they cost seconds to build and prompts never touch them)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = tiny_configs(arch)

    def build(cls, cfg):
        model = cls(CLIPTextConfig.from_dict({k: v for k, v in cfg.items() if not k.startswith("_")}))
        with torch.no_grad():  # perturb every tensor, so layer norms are not all ones
            for p in model.parameters():
                p.add_(torch.randn(p.shape) * 0.02)
        return model.eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        te = build(CLIPTextModel, configs["text_encoder"])
        te2 = build(CLIPTextModelWithProjection, configs["text_encoder_2"]) if configs["text_encoder_2"] else None
    tok, tok2 = tokenizers_for(arch, configs)
    return Components(arch, None, None, te, tok, configs["scheduler"], te2, tok2, name=f"tiny-text-{arch}")


@pytest.fixture(scope="module")
def models():
    # Tiny models run far faster on one thread when other jobs share the two cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {arch: text_components(arch) for arch in ("sd1", "sd2", "sdxl")}
    torch.set_num_threads(threads)


def _sd_pipe(c):
    return StableDiffusionPipeline(
        vae=None, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=None, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_plain_prompt_equals_diffusers(models, arch):
    c = models[arch]
    want, want_neg = _sd_pipe(c).encode_prompt(PLAIN, "cpu", 1, True, negative_prompt="")
    cond, uncond = PromptEncoder(c).encode_pair(PLAIN, "")
    assert cond.pooled is None and cond.hidden_states.shape == want.shape == (1, 77, 32)
    assert (cond.hidden_states - want).abs().max() <= 1e-5
    assert (uncond.hidden_states - want_neg).abs().max() <= 1e-5


def test_sdxl_equals_diffusers(models):
    c = models["sdxl"]
    pipe = StableDiffusionXLPipeline(
        vae=None, text_encoder=c.text_encoder, text_encoder_2=c.text_encoder_2,
        tokenizer=c.tokenizer, tokenizer_2=c.tokenizer_2, unet=None, scheduler=None,
    )
    enc = PromptEncoder(c)
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(PLAIN, device="cpu", negative_prompt="blurry")
    cond, uncond = enc.encode_pair(PLAIN, "blurry")
    assert cond.hidden_states.shape == (1, 77, 32 + 64) and cond.pooled.shape == (1, 64)
    for ours, theirs in [(cond.hidden_states, emb), (cond.pooled, pooled), (uncond.hidden_states, neg), (uncond.pooled, neg_pooled)]:
        assert (ours - theirs).abs().max() <= 1e-5
    # An empty negative is zeros for SDXL (A1111 and diffusers' force_zeros_for_empty_prompt).
    _, neg, _, neg_pooled = pipe.encode_prompt(PLAIN, device="cpu")
    _, uncond = enc.encode_pair(PLAIN, "")
    assert torch.equal(uncond.hidden_states, neg) and torch.equal(uncond.pooled, neg_pooled)


def test_weights_change_only_their_rows_and_keep_the_mean(models):
    enc = PromptEncoder(models["sd1"])
    plain = enc.encode("a cat on a mat").hidden_states[0]
    weighted = enc.encode("a (cat:1.5) on a [mat]").hidden_states[0]
    w = torch.ones(77)
    w[2], w[5] = 1.5, 1 / 1.1  # BOS a cat on a mat EOS
    expected = plain * w[:, None]
    expected *= plain.mean() / expected.mean()
    assert torch.allclose(weighted, expected, atol=1e-6)
    ratio = (weighted / plain)[:, 0]
    unchanged = [i for i in range(77) if i not in (2, 5)]
    assert torch.allclose(ratio[unchanged], ratio[0].expand(75), atol=1e-6)
    assert abs(ratio[2] / ratio[0] - 1.5) < 1e-5
    assert abs(weighted.mean() - plain.mean()) < 1e-6


def test_sdxl_weights_keep_each_encoders_mean(models):
    enc = PromptEncoder(models["sdxl"])
    plain, weighted = enc.encode("a cat"), enc.encode("a (cat:1.4)")
    for part in (slice(0, 32), slice(32, 96)):
        a, b = plain.hidden_states[..., part], weighted.hidden_states[..., part]
        assert not torch.allclose(a, b) and abs(a.mean() - b.mean()) < 1e-6
    assert torch.equal(plain.pooled, weighted.pooled)  # the pooled embedding is not weighted


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_long_prompt_makes_two_chunks(models, arch):
    enc = PromptEncoder(models[arch])
    cond = enc.encode(LONG)
    assert cond.hidden_states.shape[1] == 154
    if arch == "sdxl":  # pooled comes from the first chunk, as A1111
        first = enc.chunks(LONG)[0]
        assert len(first.tokens) <= 75
        with torch.no_grad():
            alone = enc.encoders[1](enc.chunks(LONG)[:1], 1)[1]
        assert torch.allclose(alone, cond.pooled, atol=1e-6)
    # the short side of a pair is padded with empty-prompt chunks
    cond, uncond = enc.encode_pair(LONG, "blurry")
    assert uncond.hidden_states.shape == cond.hidden_states.shape
    assert torch.equal(uncond.hidden_states[:, 77:], enc.encode("").hidden_states)
    batch = enc.encode_batch(["blurry", LONG])
    assert batch.hidden_states.shape[:2] == (2, 154)


def test_break_starts_a_new_chunk(models):
    enc = PromptEncoder(models["sd1"])
    both = enc.encode("a cat BREAK a dog").hidden_states
    assert both.shape[1] == 154
    assert torch.equal(both[:, :77], enc.encode("a cat").hidden_states)
    assert torch.equal(both[:, 77:], enc.encode("a dog").hidden_states)


def test_clip_skip_sd1_uses_earlier_layer_and_final_norm(models):
    c = models["sd1"]
    enc = PromptEncoder(c)
    ids = c.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = c.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        want = c.text_encoder.final_layer_norm(hidden)
    assert torch.allclose(enc.encode("a cat", clip_skip=2).hidden_states, want, atol=1e-6)
    with pytest.raises(StablekitError, match="clip skip"):
        enc.encode("a cat", clip_skip=0)
    with pytest.raises(StablekitError, match="clip skip"):
        enc.encode("a cat", clip_skip=3)  # the tiny encoder has 2 layers


def test_clip_skip_is_ignored_for_sdxl_as_a1111(models):
    enc = PromptEncoder(models["sdxl"])
    assert not enc.clip_skip_applies
    assert enc.encode("a cat", clip_skip=2) is enc.encode("a cat", clip_skip=1)


def test_cache_hit_does_not_call_the_encoder(models):
    c = models["sd1"]
    enc = PromptEncoder(c, cache_size=2)
    calls = []
    hook = c.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = enc.encode("a cat")
        assert enc.encode("a cat") is first and len(calls) == 1
        enc.encode("a cat", clip_skip=2)
        assert len(calls) == 2  # clip skip is part of the key
        enc.encode("a dog")  # evicts the least recently used ("a cat", 1)
        enc.encode("a cat")
        assert len(calls) == 4
        enc.clear_cache()
        enc.encode("a cat")
        assert len(calls) == 5
    finally:
        hook.remove()


def test_empty_prompt_and_extra_network_tags(models):
    enc = PromptEncoder(models["sd1"])
    assert enc.encode("").hidden_states.shape == (1, 77, 32)
    assert torch.equal(enc.encode("a cat <lora:style:0.8>").hidden_states, enc.encode("a cat").hidden_states)
