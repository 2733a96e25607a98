"""DVP on ScienceQA through LaVIN (Dynamic_Visual_Prompting_For_SQA ``lavin/model.py``), restated: an image sample's
sequence gets one learned slot right after its image tokens; before LLaMA layer K no later token reads the slot; at
K the slot becomes ``xattn(query, CLIP)`` where the query is the mean of the layer-K input over the prompt tokens
after BOS and CLIP is the last block's output over every token (no ln_post); an image-less sample gets no slot."""

from __future__ import annotations

import pytest
import torch

from vlpeft._protocol import LayerPlan
from vlpeft.backbones.lavin import build_lavin

TINY = dict(plm_config="test_llama_tiny_bertvocab", lavin_clip_model="test_clip_tiny", lavin_clip_every=1,
            lavin_hidden_proj=16, lavin_visual_adapter_dim=4, tokenizer="bert-base-uncased", method="dvp",
            dvp_llama_xattn_dim=16, num_heads=4, drop_rate=0.0)


def _perturbed(**kw):
    torch.manual_seed(0)
    m = build_lavin(dict(TINY, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():  # off the init: zero biases / up-projections would hide the prompt's path
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.fixture(scope="module")
def model():
    return _perturbed()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (3, 6), generator=g)
    ids[:, 0] = 101
    masks = torch.ones(3, 6, dtype=torch.long)
    masks[1, 4:] = 0
    return dict(text_ids=ids, text_masks=masks, image=torch.randn(3, 3, 32, 32, generator=g),
                has_image=torch.tensor([1, 1, 0]), target_ids=torch.tensor([[1200, 102], [1300, 102], [1400, -100]]))


def test_the_prompt_is_xattn_of_the_pooled_prompt_tokens_on_clips_last_block(model, batch):
    k = 1
    seen, inputs = {}, {}
    h1 = model.cross_attn.register_forward_hook(lambda mod, a, out: seen.update(q=a[0], v=a[1], out=out))

    def keep_input(mod, args, kwargs):
        inputs.setdefault("h", args[0] if args else kwargs["hidden_states"])

    h2 = model.plm.layers[k].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        with torch.no_grad():
            model(batch, LayerPlan(insert_layer=k))
    finally:
        h1.remove()
        h2.remove()
    n_img = model.image_tokens(batch["image"][:1]).shape[1]
    slot = 2 + len(model._prefix["img"]) + n_img  # modality token, BOS, "Image: ", image tokens
    h = inputs["h"]
    lens = batch["text_masks"].sum(1)
    query = torch.stack([h[b, slot + 1:slot + int(lens[b])].mean(0) for b in (0, 1)])  # t_1 … t_n, image rows
    torch.testing.assert_close(seen["q"], query)
    clip_last = model.clip(pixel_values=batch["image"]).last_hidden_state[:2]
    torch.testing.assert_close(seen["v"], clip_last)
    torch.testing.assert_close(h[:2, slot], seen["out"][:, 0])  # layer K reads the prompt in the slot


def test_the_placeholder_is_unread_and_the_prompt_reaches_the_answer(model, batch):
    plan = LayerPlan(insert_layer=1)
    with torch.no_grad():
        base = model(batch, plan)["lm_logits"]
        model.image_params.add_(1.0)
        moved_slot = model(batch, plan)["lm_logits"]
        model.image_params.sub_(1.0)
        model.cross_attn.linear_merge.bias.add_(1.0)
        moved_prompt = model(batch, plan)["lm_logits"]
        model.cross_attn.linear_merge.bias.sub_(1.0)
    torch.testing.assert_close(moved_slot, base)  # hidden until K, overwritten at K
    assert (moved_prompt[:2] - base[:2]).abs().max() > 1e-4  # image rows read the prompt from K on
    torch.testing.assert_close(moved_prompt[2], base[2])  # the image-less row has no slot


def test_hide_after_insert_restores_the_originals_unread_prompt(batch):
    m = _perturbed(lavin_dvp_hide_after_insert=True)
    plan = LayerPlan(insert_layer=1)
    with torch.no_grad():
        base = m(batch, plan)["lm_logits"]
        m.cross_attn.linear_merge.bias.add_(1.0)
        moved = m(batch, plan)["lm_logits"]
    torch.testing.assert_close(moved, base)


def test_search_stage_uses_one_cross_attention_per_layer(batch):
    m = _perturbed(search_stage=True)
    assert len(m.cross_attn_options) == m.num_layers and not hasattr(m, "cross_attn")
    assert m.candidates().insert
    losses = []
    with torch.no_grad():
        for k in range(m.num_layers):
            losses.append(float(m(batch, LayerPlan(insert_layer=k))["lm_loss"]))
            m.cross_attn_options[k].linear_merge.bias.add_(1.0)
            assert float(m(batch, LayerPlan(insert_layer=k))["lm_loss"]) != losses[-1]
    with pytest.raises(ValueError, match="needs insert_layer"):
        m(batch, LayerPlan())


def test_dvp_without_clip_is_one_clear_error_before_the_model_is_built():
    with pytest.raises(ValueError, match=r"method=dvp on lavin needs CLIP .* lavin_clip_model="):
        build_lavin(dict(TINY, lavin_clip_model=""))
