"""LoRA / IA3 / prompt-tuning adapters in Hugging Face peft's layout: export ours, import theirs (issue 20, item 4).

Our backbones wrap transformers models without renaming their parameters (``vlpeft.pet._wrap``): a LoRA on
``encoder.layer.0.attention.self.query`` of a ``BertModel`` is ``….query.lora_A`` / ``….query.lora_B`` beside the
untouched ``….query.weight``. peft stores the same tensors as ``base_model.model.<module path>.lora_A.weight`` in
``adapter_model.safetensors`` next to an ``adapter_config.json`` (``peft_type``, ``r``, ``lora_alpha``,
``target_modules``, ``fan_in_fan_out``, ``bias``, ``modules_to_save``, …). So an export is a renaming plus a config:

    python -m vlpeft.peft_io export RUN_DIR|CKPT OUT_DIR [--root plm.bert]
    python -m vlpeft.peft_io import ADAPTER_DIR RUN_DIR|CKPT --out FILE.ckpt [--root plm.bert]

and ``PeftModel.from_pretrained(<the plain transformers model>, OUT_DIR)`` computes what our module computed (the
task head is ours, not the transformers model's, and is not exported). ``export_peft`` / ``import_peft`` are the
functions. Writing needs only safetensors; peft itself is needed by nobody here (tests load the export with it).

What maps: LoRA on any projection (``nn.Linear``; GPT-2 ``Conv1D`` with ``fan_in_fan_out``), ranks and scalings
that differ per module (``rank_pattern`` / ``alpha_pattern``), the q/v-masked LoRA on a fused projection (as peft's
rank ``g·r`` LoRA with block-structured A, B: the same function), IA3 on outputs and feed-forward inputs, trained
biases (``bias="all"`` / ``"lora_only"``) and other trained base modules (``modules_to_save``), and VL-T5's input
prompt (``PROMPT_TUNING`` on the encoder; our ``P = MLP(E)`` is fixed after training, so its value is the table —
export only: a table has no exact ``MLP(E)`` form to import into). What does not (peft has no equivalent, so the
export refuses and names the module): bottleneck adapters, gates, DAS skip adapters and skipping placements,
BART's input prompt (ours enters after the position embeddings), routed or per-task LoRA, a module on a projection
that is neither LoRA nor IA3, PET modules on two transformers models at once.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlpeft._io import atomic_path, write_json_atomic
from vlpeft.checkpoint import read_checkpoint
from vlpeft.lightning import VLPeftModule
from vlpeft.pet._wrap import ProjWrap, attach_to_linear, is_projection, projection_dims
from vlpeft.pet.ia3 import IA3
from vlpeft.pet.lora import LoRA
from vlpeft.pruning import ExportError, find_checkpoint
from vlpeft.search.placement import Placement

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
SUPPORTED = ("LoRA and IA3 on projections (plus trained biases / whole base modules as bias / modules_to_save) "
             "and T5 input prompts")


class PeftIOError(ValueError):
    """An export or import that cannot be made; the message names the module, key or file and the fix."""


# --- finding the transformers model -------------------------------------------------------------------------------
def _hf_roots(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost transformers ``PreTrainedModel`` submodules of ``model`` by name (``""``: ``model`` itself)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return {"": model}
    roots: dict[str, nn.Module] = {}
    for name, m in model.named_modules():  # parents come before their children
        if isinstance(m, PreTrainedModel) and not any(name.startswith(r + ".") for r in roots):
            roots[name] = m
    return roots


def _pet_wraps(model: nn.Module) -> dict[str, ProjWrap]:
    return {n: m for n, m in model.named_modules() if isinstance(m, ProjWrap) and m.pets()}


def _rel(name: str, root: str) -> str:
    return name[len(root) + 1:] if root else name


def _pick_root(model: nn.Module, root: str | None) -> tuple[str, nn.Module]:
    roots = _hf_roots(model)
    if root is not None:
        if root not in roots:
            raise PeftIOError(f"root={root!r} is not a transformers model inside {type(model).__name__}; "
                              f"pick one of {sorted(roots) or '(none)'}")
        return root, roots[root]
    if not roots:
        raise PeftIOError(f"{type(model).__name__} holds no transformers PreTrainedModel; peft adapters describe "
                          "one (export a model of the plm / clip_plm / vl_bart / vl_t5 / vit_gpt2 / vit_roberta "
                          "backbones or a transformers model)")
    wraps = _pet_wraps(model)
    holding = [r for r in roots if any(not r or n.startswith(r + ".") for n in wraps)]
    if len(holding) == 1:
        return holding[0], roots[holding[0]]
    if len(roots) == 1:
        name = next(iter(roots))
        return name, roots[name]
    raise PeftIOError(f"{type(model).__name__} holds several transformers models {sorted(roots)}"
                      f"{' with LoRA / IA3 on ' + str(holding) if holding else ''}; name one with root= (--root)")


# --- export -------------------------------------------------------------------------------------------------------
def _prompt_host(hf: nn.Module) -> bool:
    """Whether our input prompt on ``hf`` is peft's prompt tuning: T5 (no absolute positions; VL-T5 prepends the
    prompt to the raw token embeddings, as peft does). BART adds positions before our prompt enters."""
    return getattr(getattr(hf, "config", None), "model_type", "") == "t5"


def _foreign_pet(model: nn.Module, root_name: str, hf: nn.Module) -> tuple[str, str] | None:
    """The first PET module (name, why) that changes what ``hf`` computes other than a LoRA / IA3 on a projection:
    a vlpeft PET module inside it, a vlpeft hook on one of its modules (sequential / parallel adapters, gates,
    ``in_seq`` adapters sit outside and hook in), an input prompt, or a placement that skips layers (DAS).
    PET modules that only feed it from outside (DVP's prompt generator) and the heads are not its function."""
    names = {id(m): n for n, m in model.named_modules()}
    for name, m in hf.named_modules():
        full = f"{root_name}.{name}".strip(".") if root_name else name
        if not isinstance(m, ProjWrap) and type(m).__module__.startswith("vlpeft.pet."):
            return f"{full} ({type(m).__name__})", "it is not a LoRA / IA3 on a projection"
        for hook in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]:
            if not type(hook).__module__.startswith("vlpeft."):
                continue
            pets = [getattr(hook, a, None) for a in ("seq", "par_in", "par", "gate", "module")]
            pets = [p for p in pets if isinstance(p, nn.Module)]
            if pets:
                return (f"{names.get(id(pets[0]), full)} ({type(pets[0]).__name__})",
                        f"it is hooked into {full}, not a LoRA / IA3 on a projection")
    for name, m in model.named_modules():
        if type(m).__name__ == "InputPrompt" and not _prompt_host(hf):
            return (f"{name} (InputPrompt)", f"on {type(hf).__name__} our prompt enters after the position "
                    "embeddings, peft's before them; prompts export from T5 hosts only")
    plan = getattr(model, "plan", None)
    skip = sorted(getattr(plan(), "skip", ())) if callable(plan) else []
    if skip:
        return f"the placement skipping layers {skip}", "peft runs every layer of the transformers model"
    return None


def _refuse(what: str, why: str) -> PeftIOError:
    return PeftIOError(f"{what} has no peft equivalent ({why}); peft export supports {SUPPORTED}. Export the run's "
                       "own checkpoint instead (python -m vlpeft.export)")


def _lora_tensors(lora: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """peft's ``lora_A`` (R, in), ``lora_B`` (out, R) and R for our LoRA; a masked fused projection becomes rank
    ``g·r`` with B block-structured (disabled slices zero), which computes the same ``s · B A x``."""
    a, b = lora.lora_A.detach(), lora.lora_B.detach()
    if lora.mask == (True,):
        return a, b, lora.r
    full = b.new_zeros(lora.out_features, lora.groups * lora.r)
    j = 0
    for k, on in enumerate(lora.mask):
        if on:
            full[k * lora.slice:(k + 1) * lora.slice, j * lora.r:(j + 1) * lora.r] = \
                b[j * lora.slice:(j + 1) * lora.slice]
            j += 1
    return a, full, lora.groups * lora.r


def _mode(values: dict[str, Any]) -> Any:
    return Counter(values.values()).most_common(1)[0][0]


def peft_state(model: nn.Module, root: str | None = None,
               base: str = "trained") -> tuple[dict, dict[str, torch.Tensor]]:
    """(``adapter_config.json`` dict, peft-named tensors) for the LoRA, IA3 or (T5) input-prompt modules of
    ``model``'s transformers model. ``base="trained"``: base parameters with ``requires_grad`` go along (biases →
    ``bias``, whole modules → ``modules_to_save``); ``"none"``: only the PET tensors."""
    if base not in ("trained", "none"):
        raise PeftIOError(f"base={base!r} is not 'trained' (export trained base parameters too) or 'none'")
    root_name, hf = _pick_root(model, root)
    foreign = _foreign_pet(model, root_name, hf)
    if foreign:
        raise _refuse(*foreign)
    wraps = _pet_wraps(model)
    outside = [n for n in wraps if root_name and not n.startswith(root_name + ".")]
    if outside and root is None:  # named with root=: the others are left out like the heads (and listed)
        raise PeftIOError(f"LoRA / IA3 also sit outside the transformers model {root_name!r} (first: {outside[0]}); "
                          "one peft adapter describes one model — name it with root= (--root) to export its "
                          "adapter alone")
    wraps = {n: w for n, w in wraps.items() if n not in outside}
    loras: dict[str, Any] = {}
    ia3s: dict[str, Any] = {}
    for name, w in wraps.items():
        path = _rel(name, root_name)
        for m in w.pets():
            if type(m) is LoRA:
                if m.routing is not None:
                    raise _refuse(f"{path} (routed LoRA, routing={m.routing!r})", "its code depends on x_v")
                if path in loras:
                    raise _refuse(f"{path} (two LoRAs)", "peft holds one LoRA per module and adapter")
                loras[path] = m
            elif type(m) is IA3:
                if path in ia3s:
                    raise _refuse(f"{path} (two IA3 vectors)", "peft holds one IA3 vector per module and adapter")
                ia3s[path] = m
            else:
                raise _refuse(f"{path} ({type(m).__name__} on a projection)", "peft maps LoRA and IA3 only")
    prompts = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "InputPrompt"]
    if prompts and (loras or ia3s or len(prompts) > 1):
        raise PeftIOError(f"{prompts[0][0]} (InputPrompt) sits beside other PET modules; a peft adapter is one kind "
                          "— export a model with the prompt alone")
    if prompts:
        return _prompt_state(hf, prompts[0][1], base)
    if loras and ia3s:
        raise PeftIOError(f"LoRA and IA3 sit on one model ({next(iter(loras))}, {next(iter(ia3s))}); a peft adapter "
                          "is one kind — export one of them")
    if not loras and not ia3s:
        raise PeftIOError(f"no LoRA or IA3 on the transformers model {root_name or type(hf).__name__!r}: nothing "
                          "to export")
    tensors: dict[str, torch.Tensor] = {}
    fifo = any(projection_dims(hf.get_submodule(p))[2] for p in (loras or ia3s))
    cfg: dict[str, Any] = {
        "peft_type": "LORA" if loras else "IA3", "task_type": None, "inference_mode": True,
        "base_model_name_or_path": getattr(getattr(hf, "config", None), "_name_or_path", None) or None,
        "auto_mapping": {"base_model_class": type(hf).__name__, "parent_library": type(hf).__module__},
        "target_modules": sorted(loras or ia3s), "fan_in_fan_out": fifo, "modules_to_save": None,
    }
    if loras:
        ranks, alphas, drops = {}, {}, {}
        for path, m in loras.items():
            a, b, r = _lora_tensors(m)
            tensors[f"{PREFIX}{path}.lora_A.weight"] = a
            tensors[f"{PREFIX}{path}.lora_B.weight"] = b
            ranks[path], alphas[path] = r, m.scaling * r  # peft's scaling is lora_alpha / r
            drops[path] = float(getattr(m.lora_dropout, "p", 0.0))
        r0, a0 = _mode(ranks), _mode({p: alphas[p] for p in ranks if ranks[p] == _mode(ranks)})
        cfg.update(r=r0, lora_alpha=a0, lora_dropout=_mode(drops), use_rslora=False, use_dora=False, bias="none",
                   rank_pattern={p: r for p, r in ranks.items() if r != r0},
                   alpha_pattern={p: a for p, a in alphas.items() if a != a0 or ranks[p] != r0},
                   init_lora_weights=True, lora_bias=False)
    else:
        ff = []
        for path, m in ia3s.items():
            v = m.ia3_l.detach()
            tensors[f"{PREFIX}{path}.ia3_l"] = v.reshape(1, -1) if m.feedforward else v.reshape(-1, 1)
            if m.feedforward:
                ff.append(path)
        cfg.update(feedforward_modules=sorted(ff), init_ia3_weights=True)
    if base == "trained":
        _trained_base(hf, set(loras or ia3s), cfg, tensors, lora=bool(loras))
    return cfg, {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def _prompt_state(hf: nn.Module, prompt: nn.Module, base: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """peft's PROMPT_TUNING on the encoder of a seq2seq model: our re-parametrised prompt ``P = MLP(E)`` is fixed
    after training, so its value is the virtual-token table (``num_transformer_submodules=1``: encoder only)."""
    trained = [n for n, p in hf.named_parameters() if p.requires_grad]
    if base == "trained" and trained:
        raise PeftIOError(f"trained base parameter {trained[0]} cannot travel with a prompt-tuning adapter; pass "
                          "base='none' (--base none) to export the prompt alone")
    with torch.no_grad():
        table = prompt.prefix_embedding(prompt.input_tokens).detach().cpu().contiguous().clone()
    c = hf.config
    cfg = {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "inference_mode": True,
           "base_model_name_or_path": getattr(c, "_name_or_path", None) or None, "revision": None,
           "num_virtual_tokens": int(prompt.length), "token_dim": int(prompt.dim), "num_transformer_submodules": 1,
           "num_attention_heads": int(c.num_heads), "num_layers": int(c.num_layers), "modules_to_save": None,
           "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
           "tokenizer_kwargs": None}
    return cfg, {"prompt_embeddings": table}


def _trained_base(hf: nn.Module, targets: set[str], cfg: dict, tensors: dict, lora: bool) -> None:
    pet_names = {f"{p}.{n}" for p in targets for n in ("lora_A", "lora_B", "ia3_l")}
    params = dict(hf.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad and n not in pet_names}
    if not trained:
        return
    # whole trained modules first (peft's modules_to_save copies a module with all its tensors) ...
    owners: dict[str, set[str]] = {}
    for n in trained:
        owners.setdefault(n.rpartition(".")[0], set()).add(n)
    keep = []
    for owner, names in sorted(owners.items()):
        mod = hf.get_submodule(owner) if owner else hf
        own = {f"{owner}.{k}" if owner else k for k, p in mod.named_parameters(recurse=False) if p is not None}
        if owner and owner not in targets and names == own:
            keep.append(owner)
            tensors.update({f"{PREFIX}{n}": params[n] for n in own})
            trained -= own
    if keep:
        cfg["modules_to_save"] = keep
    # ... then biases (LoRA's bias option) ...
    biases = {n for n in params if n.endswith(".bias") and n not in pet_names}
    target_biases = {f"{t}.bias" for t in targets if f"{t}.bias" in params}
    if lora and trained & biases:
        # "all" saves every bias: the untrained ones (BERT's unused pooler) hold the base values, so that is exact
        cfg["bias"] = "lora_only" if (trained & biases) <= target_biases else "all"
        for n in target_biases if cfg["bias"] == "lora_only" else biases:
            owner = n.rpartition(".")[0]  # peft moves an adapted layer's own weights under base_layer
            tensors[f"{PREFIX}{owner}.base_layer.bias" if owner in targets else f"{PREFIX}{n}"] = params[n]
        trained -= biases
    # ... and nothing else
    if trained:
        n = sorted(trained)[0]
        owner = n.rpartition(".")[0]
        where = "it carries the adapter" if owner in targets else "it is trained only in part"
        raise PeftIOError(f"trained base parameter {n} is part of a module peft cannot save whole "
                          f"({owner or type(hf).__name__}: {where}); pass base='none' (--base none) to export "
                          "the adapter alone")


def export_peft(model: nn.Module, out_dir: str | Path, root: str | None = None, base: str = "trained") -> Path:
    """Write ``model``'s LoRA / IA3 / T5-prompt adapter as a peft adapter folder (``adapter_config.json`` +
    ``adapter_model.safetensors``). ``model``: a ``VLPeftModule``, a backbone or a transformers model with our PET
    modules attached; ``root``: the transformers submodule to describe where there are several (``plm.bert``)."""
    from safetensors.torch import save_file

    cfg, tensors = peft_state(model, root, base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json_atomic(out / CONFIG_FILE, cfg)
    print(f"[vlpeft] peft {cfg['peft_type']} adapter: {out} ({len(cfg.get('target_modules') or ())} modules, "
          f"{sum(v.numel() for v in tensors.values()):,d} values)", flush=True)
    root_name, _ = _pick_root(model, root)
    left = sorted({".".join(n.split(".")[:2]) for n, p in model.named_parameters()
                   if p.requires_grad and root_name and not n.startswith(root_name + ".")})
    if left:  # heads, DVP's prompt generator, …: trained, but not part of the transformers model peft adapts
        print(f"[vlpeft] not exported (outside {root_name}): {', '.join(left)}", flush=True)
    return out


# --- import -------------------------------------------------------------------------------------------------------
_LORA_UNSUPPORTED = ("use_dora", "lora_bias", "target_parameters", "layer_replication", "use_qalora", "use_bdlora")


def read_peft(adapter_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise PeftIOError(f"{d} is not a peft adapter folder: it needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                          "(save_pretrained writes both; .bin adapters: re-save them with safetensors)")
    return json.loads(cfg_path.read_text()), load_file(str(w_path))


def import_peft(model: nn.Module, adapter_dir: str | Path, root: str | None = None, attach: bool = True) -> list[str]:
    """Load a peft LoRA / IA3 adapter folder into ``model``'s transformers model; returns the adapted module paths.

    Where a projection already carries our LoRA / IA3 (a model built from a run's config), its tensors are
    replaced (a masked fused LoRA takes peft's rank ``g·r`` form back when the off-block entries are zero);
    elsewhere a new module is attached (so a plain transformers model becomes the adapted one) unless
    ``attach=False`` (the CLI: the checkpoint must fit the model its config builds). Biases and
    ``modules_to_save`` tensors replace the base parameters of the same names."""
    cfg, sd = read_peft(adapter_dir)
    kind = str(cfg.get("peft_type", "")).upper()
    if kind == "PROMPT_TUNING":  # export only: a fixed table is not an MLP of learned tokens
        raise PeftIOError(f"{adapter_dir}: a PROMPT_TUNING table has no exact form in vlpeft's input prompt (P = "
                          "MLP(E), tanh in between); import takes LORA and IA3 adapters")
    if kind not in ("LORA", "IA3"):
        raise PeftIOError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r} is not supported; import takes LORA "
                          "and IA3 adapters")
    bad = [k for k in _LORA_UNSUPPORTED if cfg.get(k)] if kind == "LORA" else []
    if bad:
        raise PeftIOError(f"{adapter_dir}: {bad[0]}={cfg[bad[0]]!r} has no equivalent in vlpeft's LoRA; import "
                          "plain LoRA adapters (use_dora / lora_bias / target_parameters off)")
    root_name, hf = _pick_root(model, root)
    stray = [k for k in sd if not k.startswith(PREFIX)]
    if stray:
        raise PeftIOError(f"{adapter_dir}: key {stray[0]!r} is not under {PREFIX!r}; only adapters of a plain "
                          "transformers model (not prompt learning) import")
    sd = {k[len(PREFIX):]: v for k, v in sd.items()}
    rs = bool(cfg.get("use_rslora"))
    done: list[str] = []
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for key in sorted(sd):
            if kind == "LORA" and key.endswith(".lora_A.weight"):
                path = key[:-len(".lora_A.weight")]
                a, b = sd[key], sd.get(f"{path}.lora_B.weight")
                if b is None:
                    raise PeftIOError(f"{adapter_dir}: {PREFIX}{path}.lora_A.weight has no lora_B beside it")
                r = int(a.shape[0])
                alpha = float(_pattern(cfg.get("alpha_pattern"), path, cfg.get("lora_alpha", 8)))
                scaling = alpha / (math.sqrt(r) if rs else r)
                proj = _projection(hf, path, adapter_dir)
                mine = [m for m in (proj.pets("delta") if isinstance(proj, ProjWrap) else []) if type(m) is LoRA]
                if mine:
                    _load_lora(mine[0], a, b, scaling, path)
                elif not attach:
                    raise _no_slot(path, "LoRA", adapter_dir)
                else:
                    d_in, d_out, _ = projection_dims(proj)
                    m = LoRA(d_in, d_out, r=r, alpha=1.0)
                    m.scaling = scaling  # peft's α / r (or α / √r with use_rslora), exactly
                    _load_lora(m, a, b, scaling, path)
                    attach_to_linear(hf, path, m)
                done.append(path)
            elif kind == "IA3" and key.endswith(".ia3_l"):
                path = key[:-len(".ia3_l")]
                v = sd[key]
                ff = v.shape[0] == 1 and v.dim() == 2
                proj = _projection(hf, path, adapter_dir)
                mine = [m for m in (proj.pets() if isinstance(proj, ProjWrap) else []) if type(m) is IA3]
                if mine:
                    if mine[0].feedforward != ff or mine[0].ia3_l.numel() != v.numel():
                        raise PeftIOError(f"{path}: the adapter's IA3 vector {tuple(v.shape)} does not fit the "
                                          f"model's ({mine[0].ia3_l.numel()}, feedforward={mine[0].feedforward})")
                    mine[0].ia3_l.copy_(v.reshape(-1))
                elif not attach:
                    raise _no_slot(path, "IA3", adapter_dir)
                else:
                    m = IA3(v.numel(), ff)
                    m.ia3_l.copy_(v.reshape(-1))
                    attach_to_linear(hf, path, m)
                done.append(path)
            elif key.endswith(".lora_B.weight"):
                continue
            elif key.endswith(".base_layer.bias") and key.replace(".base_layer.", ".") in params:  # peft's name
                params[key.replace(".base_layer.", ".")].copy_(sd[key])
            elif key in params:  # bias="all" / "lora_only", modules_to_save
                if params[key].shape != sd[key].shape:
                    raise PeftIOError(f"{adapter_dir}: {key} has shape {tuple(sd[key].shape)}, the model's "
                                      f"{tuple(params[key].shape)}: the adapter was trained on another model")
                params[key].copy_(sd[key])
            else:
                raise PeftIOError(f"{adapter_dir}: {PREFIX}{key} names nothing in {type(hf).__name__} "
                                  f"{'(' + root_name + ')' if root_name else ''}: the adapter was made for another "
                                  "model, or holds a tensor vlpeft does not import")
    return done


def _no_slot(path: str, kind: str, where: Any) -> PeftIOError:
    return PeftIOError(f"{where}: the adapter puts {kind} on {path}, which carries none in the model the run's config "
                       f"builds; train with a pet= recipe that adapts it (or import into a plain transformers model "
                       f"with vlpeft.peft_io.import_peft)")


def _pattern(patterns: dict | None, path: str, default: Any) -> Any:
    import re

    for key, value in (patterns or {}).items():  # peft's rule: the key matches a suffix of the module path
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _projection(hf: nn.Module, path: str, where: Any) -> nn.Module:
    try:
        proj = hf.get_submodule(path)
    except AttributeError:
        raise PeftIOError(f"{where}: module {path!r} does not exist in {type(hf).__name__}; the adapter was made "
                          "for another model") from None
    if not is_projection(proj):
        raise PeftIOError(f"{where}: {path} is a {type(proj).__name__}, not a Linear / Conv1D projection")
    return proj


def _load_lora(m: nn.Module, a: torch.Tensor, b: torch.Tensor, scaling: float, path: str) -> None:
    if tuple(a.shape) == tuple(m.lora_A.shape) and tuple(b.shape) == tuple(m.lora_B.shape):
        m.lora_A.copy_(a)
        m.lora_B.copy_(b)
    elif m.mask != (True,) and a.shape[0] == m.groups * m.r and b.shape == (m.out_features, m.groups * m.r):
        # the block form the export writes for a masked fused projection: take the blocks back
        blocks, j = [], 0
        rest = b.clone()
        for k, on in enumerate(m.mask):
            if on:
                rows = slice(k * m.slice, (k + 1) * m.slice)
                blocks.append(b[rows, j * m.r:(j + 1) * m.r])
                rest[rows, j * m.r:(j + 1) * m.r] = 0
                j += 1
        if rest.abs().max() > 0:
            raise PeftIOError(f"{path}: the adapter's rank-{a.shape[0]} LoRA is not block-structured like the "
                              f"model's masked LoRA (mask {m.mask}); build the model without qkv_mask")
        m.lora_A.copy_(a)
        m.lora_B.copy_(torch.cat(blocks, dim=0))
    else:
        raise PeftIOError(f"{path}: the adapter's LoRA (A {tuple(a.shape)}, B {tuple(b.shape)}) does not fit the "
                          f"model's (A {tuple(m.lora_A.shape)}, B {tuple(m.lora_B.shape)}); set lora_r to "
                          f"{a.shape[0]}")
    if not math.isclose(m.scaling, scaling, rel_tol=1e-9):
        print(f"[vlpeft] {path}: LoRA scaling {m.scaling:g} → the adapter's {scaling:g}", flush=True)
        m.scaling = scaling


# --- runs and checkpoints -----------------------------------------------------------------------------------------
def _load_run(source: str | Path):
    ckpt = find_checkpoint(source)
    sd, extras = read_checkpoint(ckpt)
    config = (extras.get("hyper_parameters") or {}).get("config")
    if not config:
        raise PeftIOError(f"{ckpt} has no saved config (hyper_parameters.config): pass a checkpoint written by a "
                          "vlpeft train run")
    saved = extras.get("vlpeft_placement")
    module = VLPeftModule(config, placement=Placement.from_dict(saved, source=str(ckpt)) if saved else None)
    result = module.load_state_dict(sd, strict=False)
    if result.missing_keys:
        raise PeftIOError(f"{ckpt} lacks {len(result.missing_keys)} tensors of the model its config builds (first: "
                          f"{result.missing_keys[0]})")
    return module, ckpt, extras


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlpeft.peft_io", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="a run's LoRA / IA3 / T5 prompt → a peft adapter folder")
    ex.add_argument("source", help="a run folder (its best checkpoint, else last.ckpt) or a .ckpt file")
    ex.add_argument("out", help="the adapter folder to write")
    ex.add_argument("--root", default=None, help="the transformers submodule, where there are several")
    ex.add_argument("--base", default="trained", choices=("trained", "none"),
                    help="export trained base parameters (biases, whole modules) too, or the adapter alone")
    im = sub.add_parser("import", help="a peft adapter folder → a checkpoint of a run's model")
    im.add_argument("adapter", help="the peft adapter folder (adapter_config.json + adapter_model.safetensors)")
    im.add_argument("source", help="the run folder or .ckpt whose config builds the model")
    im.add_argument("--out", required=True, help="the checkpoint to write (load it with load_path=)")
    im.add_argument("--root", default=None, help="the transformers submodule, where there are several")
    args = ap.parse_args(argv)

    try:
        module, ckpt, extras = _load_run(args.source)
        if args.cmd == "export":
            export_peft(module, args.out, args.root, args.base)
        else:
            paths = import_peft(module, args.adapter, args.root, attach=False)
            with atomic_path(Path(args.out)) as tmp:
                torch.save({**extras, "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}},
                           tmp)
            print(f"[vlpeft] imported {len(paths)} modules from {args.adapter} into {args.out} (built as {ckpt})")
    except (PeftIOError, ExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CONFIG_FILE", "PeftIOError", "WEIGHTS_FILE", "export_peft", "import_peft", "main", "peft_state",
           "read_peft"]
