"""Config, placement and model-folder input checks (issue 18): every case is refused with one message naming the
input and the fix, before any model is built and before a run folder is reserved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlpeft.config import ConfigError
from vlpeft.search.placement import Placement, PlacementError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_build(monkeypatch):
    """Any model build fails the test: the refusals must come first."""
    import vlpeft.lightning

    def refuse(*a, **k):
        raise AssertionError("a model was built before the refusal")

    monkeypatch.setattr(vlpeft.lightning.VLPeftModule, "__init__", refuse)


def _versions(log_dir: Path) -> list[Path]:
    return sorted(log_dir.rglob("version_*"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


# --- item 3: a hand-edited placement means what it says, or is refused ------------------------------------------
@pytest.mark.parametrize("skip, words", [
    ("12", r"'skip' is '12'; it must be a list of distinct layer indices"),
    ([1.7], r"'skip' is \[1.7\]"),
    ([True], r"'skip' is \[True\]"),
])
def test_hand_edited_skip_of_the_wrong_type_is_refused(tmp_path, skip, words):
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"method": "das", "skip": skip}))
    with pytest.raises(PlacementError, match=str(path) + ".*" + words):
        Placement.load(path)


def test_skip_module_of_non_integers_is_refused(demo, arrows, tmp_path, no_build):
    with pytest.raises(ConfigError, match=r"skip_module \[1.7\]: \[1.7\] are not layer indices"):
        demo(data_root=str(arrows), log_dir=str(tmp_path / "r"), skip_module=[1.7])


def test_hand_edited_placement_duplicates_and_range_name_the_file(tmp_path):
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"method": "das", "skip": [1, 1], "num_layers": 4}))
    with pytest.raises(PlacementError, match=f"{path}.*listed more than once"):
        Placement.load(path)
    path.write_text(json.dumps({"method": "das", "skip": [5], "num_layers": 4}))
    with pytest.raises(PlacementError, match=f"{path}.*out of range"):
        Placement.load(path)
    path.write_text(json.dumps({"method": "das", "skip": [3, 1], "num_layers": 4}))
    assert Placement.load(path).skip == (3, 1)  # a well-formed file still loads


def test_placement_not_utf8_or_non_numeric_scores_names_the_file(demo, arrows, tmp_path, no_build):
    bad = tmp_path / "latin1" / "placement.json"
    bad.parent.mkdir()
    bad.write_bytes('{"method": "das", "skip": [1], "meta": {"note": "caf\xe9"}}'.encode("latin-1"))
    log = tmp_path / "r"
    with pytest.raises(PlacementError, match=f"placement file {bad} is not UTF-8 text"):
        demo(data_root=str(arrows), log_dir=str(log), placement=str(bad))
    scores = tmp_path / "scores" / "placement.json"
    scores.parent.mkdir()
    scores.write_text(json.dumps({"method": "das", "skip": [1], "scores": ["high", 0.2]}))
    with pytest.raises(PlacementError, match=f"{scores}: 'scores' is \\['high', 0.2\\]; it must be a list of numbers"):
        demo(data_root=str(arrows), log_dir=str(log), placement=str(scores))
    assert _versions(log) == []


def test_kab_placement_given_to_vilt_names_the_file_and_fix(demo, arrows, tmp_path, no_build):
    path = tmp_path / "dvp" / "placement.json"
    Placement.kab(1, num_layers=4).save(path)
    log = tmp_path / "r"
    with pytest.raises(ConfigError, match=rf"placement {path} places a visual prompt \(method=kab, insert_layer=1.*"
                                          r"backbone=vilt takes no inserted prompt; pass placement=<the placement.json "
                                          r"of a DAS search on vilt>"):
        demo(data_root=str(arrows), log_dir=str(log), placement=str(path))
    assert _versions(log) == []


# --- item 11: a search that searches nothing -----------------------------------------------------------------------
def test_das_search_with_no_search_epoch_is_refused(demo, arrows, tmp_path, no_build):
    log = tmp_path / "r"
    with pytest.raises(ConfigError, match=r"das_epoch=1 <= das_warmup_epoch=1: .*set das_epoch > das_warmup_epoch"):
        demo(data_root=str(arrows), log_dir=str(log), stage="search", das_epoch=1)
    assert _versions(log) == []


# --- unclear inputs: named, with the fix, before the build and the run folder --------------------------------------
@pytest.mark.parametrize("updates, words", [
    (dict(cpu_devices=0), r"cpu_devices=0 must be a positive integer"),
    (dict(val_check_interval=0), r"val_check_interval=0 must be a fraction of an epoch in \(0, 1\]"),
    (dict(val_check_interval=1.5), r"val_check_interval=1.5 must be"),
    (dict(per_gpu_batchsize=0), r"per_gpu_batchsize=0: set it to a positive integer .*per_gpu_batchsize=32"),
    (dict(batch_size=12), r"batch_size=12 must be a positive multiple of per_gpu_batchsize"),
    (dict(strategy="fsdp"), r"strategy=fsdp needs GPUs, but num_gpus=0 runs on the CPU; set num_gpus>=1, or "
                            r"strategy=auto"),
    # deepspeed is an extra (not installed here): named with its install line, GPUs asked for or not
    (dict(strategy="deepspeed_stage_2", num_gpus=1), r"strategy=deepspeed_stage_2 needs the deepspeed package, which "
                                                     r"is not installed: pip install deepspeed"),
    (dict(strategy="deepspeed_stage_3"), r"strategy=deepspeed_stage_3 needs the deepspeed package.*pip install "
                                         r"deepspeed"),
    (dict(train_transform_keys="[clip]"), r"train_transform_keys='\[clip\]' is a string, not a list of names .*"
                                          r"'train_transform_keys=\[\"clip\"\]'"),
    (dict(pet="routing_lora_add"), r"pet=routing_lora_add reads the visual context \['x_v'\], which backbone=vilt "
                                   r"does not compute; use a backbone that provides it \(vit_gpt2, vit_roberta\)"),
])
def test_unclear_inputs_are_named_before_the_build(demo, arrows, tmp_path, no_build, updates, words):
    log = tmp_path / "r"
    with pytest.raises(ConfigError, match=words):
        demo(data_root=str(arrows), log_dir=str(log), **updates)
    assert _versions(log) == []


def test_unknown_loss_names_key_is_ours_not_sacreds(demo, arrows, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown loss_names key\(s\) \['vqa_gen'\]; valid keys: \['itm', "):
        demo(data_root=str(arrows), log_dir=str(tmp_path / "r"), loss_names={"vqa": 1, "vqa_gen": 1})


def test_command_line_unknown_loss_name_and_unquoted_list(arrows, tmp_path):
    p = _cli("run.py", "with", "demo", f"data_root={arrows}", f"log_dir={tmp_path / 'r'}", "stage=train",
             "loss_names.vqa_gen=1")
    assert p.returncode != 0 and "unknown loss_names key(s) ['vqa_gen']; valid keys" in p.stderr
    assert "ConfigAddedError" not in p.stderr
    # what bash leaves of train_transform_keys=["clip"] typed without single quotes
    p = _cli("run.py", "with", "demo", f"data_root={arrows}", f"log_dir={tmp_path / 'r'}", "stage=train",
             "train_transform_keys=[clip]")
    assert p.returncode != 0 and "is a string, not a list of names" in p.stderr
    assert _versions(tmp_path / "r") == []


# --- items 6, 7, 10: pretrained folders of the right family, vocabularies that match, names that mean their model ---
def _folder(tmp_path: Path, name: str, model_type: str, **cfg) -> Path:
    """A model folder as far as the checks read it: config.json only (they refuse before any weight is loaded)."""
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type, **cfg}))
    return path


@pytest.mark.parametrize("updates, words", [
    (lambda f: dict(backbone="vl_bart", vl_config=None, vl_model=str(f["bert"])),
     r"vl_model='.*bert' holds a 'bert' model, but vl_bart needs bart .*set vl_model=<a bart folder>"),
    (lambda f: dict(backbone="vl_t5", vl_config=None, vl_model=str(f["bart"])),
     r"vl_model='.*bart' holds a 'bart' model, but vl_t5 needs t5"),
    (lambda f: dict(backbone="clip_plm", language_model="BERT", clip_model="test_clip_tiny", tokenizer=str(f["t5"])),
     r"tokenizer='.*t5' holds a 't5' model, but language_model=BERT needs bert"),
    (lambda f: dict(backbone="vit_gpt2", lm_config="", vit_model="test_vit_tiny", tokenizer=str(f["bert"])),
     r"tokenizer='.*bert' holds a 'bert' model, but vit_gpt2 needs gpt2"),
    (lambda f: dict(backbone="vit_roberta", lm_config="", vit_model=str(f["bert"]), tokenizer="minilm"),
     r"vit_model='.*bert' holds a 'bert' model, but the ViT image tower needs vit"),
    (lambda f: dict(backbone="clip_plm", clip_model=str(f["bert"]), plm_config="test_bert_tiny_bertvocab"),
     r"clip_model='.*bert' holds a 'bert' model, but the CLIP image tower needs clip"),
])
def test_model_folder_of_another_family_is_refused_before_the_build(demo, arrows, tmp_path, no_build, updates, words):
    f = {k: _folder(tmp_path, k, k) for k in ("bert", "bart", "t5")}
    log = tmp_path / "r"
    with pytest.raises(ConfigError, match=words):
        demo(data_root=str(arrows), log_dir=str(log), **updates(f))
    assert _versions(log) == []


def test_builders_check_the_family_before_loading(tmp_path):
    from vlpeft.backbones import BACKBONES
    from vlpeft.backbones._folders import FolderError

    bert = _folder(tmp_path, "bert", "bert")  # no weights: a load would fail with another error
    with pytest.raises(FolderError, match=r"vl_model='.*bert' holds a 'bert' model, but vl_bart needs bart"):
        BACKBONES.build("vl_bart", {"vl_model": str(bert), "tokenizer": "bert-base-uncased"})
    with pytest.raises(FolderError, match=r"tokenizer='.*bert' holds a 'bert' model, but language_model=T5"):
        BACKBONES.build("plm", {"language_model": "T5", "plm_config": "", "tokenizer": str(bert)})


def _tiny_bart(tmp_path: Path, vocab: int) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    path = tmp_path / f"bart{vocab}"
    cfg = BartConfig(vocab_size=vocab, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=64)
    BartForConditionalGeneration(cfg).save_pretrained(path)
    return path


def test_tokenizer_of_another_vocabulary_is_refused_and_the_vl_resize_is_said(tmp_path, capsys):
    from vlpeft.backbones import BACKBONES

    # BART's 50265-row table read through the 30522-token BERT vocabulary: every id would read another token's row
    with pytest.raises(ValueError, match=r"tokenizer='.*' does not match the vocabulary of vl_model='.*bart50265' "
                                         r"\(50265 embedding rows\): the tokenizer has only 30722 tokens .*Set "
                                         r"tokenizer=<the vl_model folder"):
        BACKBONES.build("vl_bart", {"vl_model": str(_tiny_bart(tmp_path, 50265)), "tokenizer": "bert-base-uncased"})
    # a table smaller than the vocabulary: ids past its end
    with pytest.raises(ValueError, match=r"have no row there \(first: '.*', id 20000\)"):
        BACKBONES.build("vl_bart", {"vl_model": str(_tiny_bart(tmp_path, 20000)), "tokenizer": "bert-base-uncased"})
    # the same vocabulary: only the 200 VL tokens are added, and the resize is said
    bb = BACKBONES.build("vl_bart", {"vl_model": str(_tiny_bart(tmp_path, 30522)), "tokenizer": "bert-base-uncased"})
    assert bb.seq2seq.get_input_embeddings().weight.shape[0] == 30722
    out = capsys.readouterr().out
    assert "vl_bart: token embeddings resized 30522 → 30722 rows (the VL tokens <extra_id_i> / <vis_extra_id_i>" in out
    assert "loaded vl_model=" in out and "bart, 1 layers, width 16" in out


def test_bert_base_name_never_loads_minilm(sacred, arrows, tmp_path, no_build, monkeypatch):
    import huggingface_hub

    from vlpeft.data.tokenizer import TokenizerError, default_tokenizer_folder, load_tokenizer, resolve_model_path

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # not in the HF cache
    log = tmp_path / "r"
    with pytest.raises(ConfigError, match=r"tokenizer='bert-base-uncased' names the BERT-base model \(12 layers, "
                                          r"width 768\), which is not available offline.*MiniLM \(6 layers, width "
                                          r"384\), not BERT-base. Set tokenizer=<folder of bert-base-uncased.*or "
                                          r"tokenizer=minilm"):
        sacred("dvp_adaption_bert_vqa", data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=8, num_gpus=0,
               clip_model="test_clip_tiny")
    assert _versions(log) == []
    with pytest.raises(TokenizerError, match="tokenizer=minilm"):
        resolve_model_path("bert-base-uncased")
    # the vocabulary of that name is fine as a tokenizer; the model is MiniLM only when named so
    assert len(load_tokenizer("bert-base-uncased")) == len(load_tokenizer("minilm")) == 30522
    assert resolve_model_path("minilm") == str(default_tokenizer_folder())
    cached = tmp_path / "snap"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: str(cached / "config.json"))
    assert resolve_model_path("bert-base-uncased") == str(cached)  # the real model, when the HF cache has it
