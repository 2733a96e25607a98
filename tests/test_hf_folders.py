"""``load_path`` naming a Hugging Face model folder (issue 20, item 4): a BART / T5 folder loads into VL-BART /
VL-T5 (``seq2seq.`` + HF names) and a LLaMA folder into the plain PLM backbone (``plm.llama.``), each then computing
what the transformers model of the folder computes; a folder of another family is refused. (The ViLT folder case,
through ``run.py test_only``, is in test_released_checkpoint.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.checkpoint import CheckpointError, load_weights


def _holder(backbone: nn.Module) -> nn.Module:
    """What load_weights loads into: a module with ``backbone`` and ``heads`` (no heads here)."""
    m = nn.Module()
    m.backbone, m.heads = backbone, nn.ModuleDict()
    return m


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _ids(vocab_lo=1000, vocab_hi=2000, B=2, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab_lo, vocab_hi, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, -2:] = 0
    return ids, masks


@pytest.mark.parametrize("name", ["test_vl_bart", "test_vl_t5"])
def test_seq2seq_folder_gives_the_hf_logits(name, tmp_path):
    torch.manual_seed(0)
    bb = BACKBONES.build(name).eval()
    torch.manual_seed(1)  # another init, moved off it: nothing matches unless the folder is loaded
    hf = _perturbed(type(bb.seq2seq)(bb.seq2seq.config), seed=2)
    hf.save_pretrained(tmp_path / "hf")
    (report,) = load_weights(_holder(bb), str(tmp_path / "hf"))
    assert report.kind == "Hugging Face model folder"
    # missing: only the visual projector (no HF counterpart) and the weights tied to the shared embedding
    untied = [k for k in report.missing if k.startswith("backbone.seq2seq.") and ".visual_embedding." not in k
              and not k.endswith(("embed_tokens.weight", "lm_head.weight"))]
    assert not untied, untied
    assert not report.unexpected, report.unexpected
    ids, masks = _ids()
    tg, _ = _ids(L=4, seed=1)
    with torch.no_grad():  # no image in the batch: the visual part is off, the text path is the HF model's
        ours = bb({"text_ids": ids, "text_masks": masks, "target_ids": tg}, LayerPlan())["lm_logits"]
        ref = hf(input_ids=ids, attention_mask=masks, labels=tg).logits
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hf_class", ["LlamaModel", "LlamaForCausalLM"])
def test_llama_folder_equals_hf_llama(hf_class, tmp_path):
    import transformers

    torch.manual_seed(0)
    bb = BACKBONES.build("test_plm_llama").eval()
    ref_cfg = bb.plm.llama.config
    torch.manual_seed(1)
    hf = _perturbed(getattr(transformers, hf_class)(ref_cfg), seed=3)
    hf.save_pretrained(tmp_path / "hf")
    base = hf if hf_class == "LlamaModel" else hf.model  # LlamaForCausalLM keeps LlamaModel under "model."
    (report,) = load_weights(_holder(bb), str(tmp_path / "hf"))
    assert not [k for k in report.missing if k.startswith("backbone.plm.")], report.missing
    assert report.unexpected == ([] if hf_class == "LlamaModel" else ["backbone.lm_head.weight"])
    ids, masks = _ids(vocab_lo=1, vocab_hi=ref_cfg.vocab_size)
    with torch.no_grad():
        ours = bb.plm.llama(input_ids=ids, attention_mask=masks).last_hidden_state
        ref = base(input_ids=ids, attention_mask=masks).last_hidden_state
    assert torch.equal(ours, ref)


def test_folder_of_another_family_is_refused(tmp_path):
    """A T5 folder given to the LLaMA backbone: one error naming the folder, its model_type and what it reads."""
    bb = BACKBONES.build("test_vl_t5")
    bb.seq2seq.save_pretrained(tmp_path / "t5")
    llama = BACKBONES.build("test_plm_llama")
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"t5 is a Hugging Face folder of model_type 't5'.*PLMBackbone.*'llama'"):
        load_weights(_holder(llama), str(tmp_path / "t5"))
    assert all(torch.equal(v, llama.state_dict()[k]) for k, v in before.items())  # nothing loaded


def test_wrong_family_is_refused_from_the_config_alone(tmp_path):
    """The config check (before anything is built) knows the family from the backbone and language_model."""
    from vlpeft.backbones._folders import FolderError, precheck_load_path

    BACKBONES.build("test_vl_t5").seq2seq.save_pretrained(tmp_path / "t5")
    folder = str(tmp_path / "t5")
    precheck_load_path("vl_t5", {"load_path": folder})  # the right family passes
    precheck_load_path("plm", {"load_path": ["x.ckpt", folder], "language_model": "T5"})
    with pytest.raises(FolderError, match=r"t5 is a Hugging Face folder of model_type 't5'.*\(plm\).*'llama'"):
        precheck_load_path("plm", {"load_path": ["x.ckpt", folder], "language_model": "LLAMA"})
    with pytest.raises(FolderError, match=r"model_type 't5'.*\(vl_bart\).*'bart'"):
        precheck_load_path("vl_bart", {"load_path": folder})
