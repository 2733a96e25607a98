"""Named architectures are data in one shape (issue #17 item 5): every ``*_VARIANTS`` table of the backbones is a
``Variants`` (or a family -> ``Variants`` dict where one key names several families), no two tables share a name,
an entry read is a copy, and a name of the wrong family is refused naming the family it belongs to."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
import transformers
from timm.models.vision_transformer import VisionTransformer

import vlpeft.backbones as backbones_pkg
from vlpeft.backbones._plm import PLM_VARIANTS, build_hf_plm
from vlpeft.backbones._settings import MeterSettings
from vlpeft.backbones._variants import Variants, lookup_in
from vlpeft.backbones.meter import METER_VARIANTS
from vlpeft.backbones.vilt import VIT_VARIANTS
from vlpeft.backbones.vl_seq2seq import VL_VARIANTS


def _tables() -> dict[tuple[str, str], object]:
    """(module, name) -> object for every module-level ``*_VARIANTS`` defined in a backbones module."""
    out = {}
    for info in pkgutil.iter_modules(backbones_pkg.__path__):
        mod = importlib.import_module(f"{backbones_pkg.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if name.endswith("_VARIANTS") and not name.startswith("_"):
                out[(mod.__name__, name)] = obj
    return out


def _flat(obj: object) -> list[Variants]:
    return list(obj.values()) if isinstance(obj, dict) else [obj]


def test_every_variants_table_has_one_shape():
    tables = _tables()
    assert len(tables) >= 8  # ViLT ViT, HF ViT, CLIP, METER text, METER, PLM, ViT-LM LMs, VL seq2seq
    for (mod, name), obj in tables.items():
        for t in _flat(obj):
            assert isinstance(t, Variants), f"{mod}.{name} is a {type(t).__name__}, not a Variants table"
            for entry in t:
                assert isinstance(t[entry], dict), f"{mod}.{name}[{entry!r}] is not a kwargs dict"


def test_no_two_tables_share_a_name():
    by_name: dict[str, set[int]] = {}
    for (_, name), obj in _tables().items():
        by_name.setdefault(name, set()).add(id(obj))
    assert {n: len(ids) for n, ids in by_name.items() if len(ids) > 1} == {}


def test_an_entry_read_is_a_copy():
    a = VIT_VARIANTS["test_vilt_tiny"]
    a["depth"] = 99
    assert VIT_VARIANTS["test_vilt_tiny"]["depth"] == 2


def test_transformers_entries_build_their_config():
    """Each entry of a table built by a transformers config class gives that config with the listed values."""
    n = 0
    for (_, _), obj in _tables().items():
        for t in _flat(obj):
            mod, _, cls_name = t.builds.rpartition(".")
            if mod != "transformers" or not cls_name.isidentifier():
                continue  # timm's ViT, METER's keys, METER's mixed RoBERTa/BERT text table: checked below
            cls = getattr(transformers, cls_name)
            for entry in t:
                kw = t[entry]
                got = cls(**kw).to_dict()
                # transformers 5 moves generation-only keys (BART's forced_bos/eos_token_id) off the model config
                kept = {k for k in kw if k in got}
                assert len(kept) >= len(kw) - 2, (t.family, entry, sorted(set(kw) - kept))
                assert {k: got[k] for k in kept} == {k: kw[k] for k in kept}, (t.family, entry)
                n += 1
    assert n >= 15


def test_other_entries_name_only_keys_their_builder_reads():
    vit_params = inspect.signature(VisionTransformer).parameters
    for name in VIT_VARIANTS:
        assert set(VIT_VARIANTS[name]) <= set(vit_params), name
    for name in METER_VARIANTS:
        # what build_meter reads (MeterSettings), plus the base keys the same run config gives the data (vocab_size,
        # max_text_len) and the tiny runs' layer count
        reads = {f.name for f in dataclasses.fields(MeterSettings)} | {"vocab_size", "max_text_len", "num_layers"}
        assert set(METER_VARIANTS[name]) <= reads, name


def test_wrong_family_is_refused_by_name():
    with pytest.raises(ValueError, match=r"plm_config='test_t5_tiny' is a T5 variant, not a BERT one; use one of "
                                         r"\['bert_base_random', 'test_bert_tiny', 'test_bert_tiny_bertvocab'\]"):
        build_hf_plm("BERT", "test_t5_tiny", None)
    with pytest.raises(ValueError, match=r"vl_config='nope' is not a known t5 variant"):
        lookup_in(VL_VARIANTS, "t5", "nope", "vl_config")
    with pytest.raises(ValueError, match=r"vit='vit_huge' is not a known ViT variant; use one of \["):
        VIT_VARIANTS.lookup("vit_huge", "vit")
    assert set(PLM_VARIANTS) == {"BERT", "T5", "LLAMA"}
