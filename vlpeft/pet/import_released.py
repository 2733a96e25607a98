"""Import the PET weights of released VL-PET / VL-Adapter checkpoints (spec §8.7) into our injected modules.

``import_released(model, sd, report)`` parses every key of a released state dict against the key patterns below,
finds the module our ``PetReport`` placed on the same (stack, layer, sublayer, anchor), renames the tensor to that
module's parameter name and loads the result through ``vlpeft.checkpoint.load_state`` (the one loader; shapes are
checked there). Released key → (stack, layer, sublayer, anchor, our part):

VL-PET BART (``model.encoder.layers.{ℓ}.``) / T5 (``encoder.block.{ℓ}.layer.0.`` attention, ``….layer.1.`` FFN):

- ``{attn|ff}_adapter_multihead_down.{h}.{weight,bias}`` → ``out_seq`` ``down``: the N_h heads are **row-stacked**
  (head 0 first) into one ``r × d`` map; a plain ``Bottleneck`` takes the stack as ``down``, a ``MultiHeadAdapter``
  with H heads takes it split again into H equal row blocks (H may differ from N_h: the same function, spec §2 M2);
- ``{attn|ff}_adapter_multihead_up.{weight,bias}`` → ``out_seq`` ``up``;
- ``encoder_{attn|ff}_adapter_gating_large_x_{down,up}.{weight,bias}`` → ``gate`` ``down`` / ``up`` (large);
- ``encoder_{attn|ff}_adapter_gating_middle_xy_add.{weight,bias}`` and ``…_small_xy_cat.{weight,bias}`` → ``gate``
  ``proj`` (middle_x: 1×d, small: 1×2d); ``encoder_{attn|ff}_adapter_gating_middle_ia3_add`` (d) → ``gate`` ``z``;
- decoder ``model.decoder.layers.{ℓ}.encoder_attn.`` (BART) / ``decoder.block.{ℓ}.layer.1.EncDecAttention.`` (T5)
  ``attn_value_parallel_adapter.adapters.{task}.{down_sampler,up_sampler}.{weight,bias}`` → cross-attention
  ``proj:v`` ``down`` / ``up`` (the value adapter, one copy per task key).

VL-Adapter BART (``model.{encoder|decoder}.layers.{ℓ}.``):

- ``{attn_adapter|self_attn_adapter|enc_attn_adapter|ff_adapter}.adapters.{task}.{down_sampler,up_sampler}.{weight,
  bias}`` → ``out_seq`` of attn (encoder ``attn_adapter``, decoder ``self_attn_adapter``), cross_attn
  (``enc_attn_adapter``) or ffn (``ff_adapter``), ``down`` / ``up``; a compacter's PHM samplers
  ``….{down_sampler,up_sampler}.{phm_rule,W,b}`` (factorised: ``W_left`` / ``W_right``) → our ``Compacter``'s
  ``down`` / ``up`` ``PHMLinear`` under the same names (same layouts: rule (n, n, n), slices (n, k/n, m/n),
  ``W = Σ_i C_i ⊗ S_i``, ``y = x W + b``);
- VL-Adapter T5 (``{encoder|decoder}.block.{ℓ}.layer.{i}.``): ``attn_adapter`` (i = 0: self-attention, in both
  stacks), ``enc_attn_adapter`` (decoder i = 1), ``ff_adapter`` (encoder i = 1, decoder i = 2), then as for BART;
- ``{self_attn|encoder_attn}.{q_proj|v_proj}.lora_As.{task}`` (r×d) / ``lora_Bs.{task}`` (d×r) → ``proj:q|v``
  ``lora_A`` / ``lora_B``.
- ``(model.)encoder.prompt_modules.prompts.{task}.prefix_embedding.{0,1,3}.{weight,bias}`` → the encoder's ``input``
  site (layer -1), our ``InputPrompt`` keeps those names.

Tasks: a released ``adapters.{task}`` key goes to our per-task copy ``tasks.{task}.…`` when ours is per task, else to
the one shared module. Several released keys landing on **one** parameter object (a single adapter saved under
every task key, a half-shared up layer, one task-free tensor into a shared switch) must be equal; one copy is loaded
and the rest are listed in ``LoadReport.adapted``; copies that differ are a ``CheckpointError`` naming both keys.

``LoadReport``: ``loaded`` tensors; ``adapted`` (row-stacks, re-splits, deduplicated task copies); ``missing`` — our
injected PET parameters the checkpoint did not fill (the backbone is not counted); ``unexpected`` — every released
key not imported: backbone weights and the visual projector (unless ``with_backbone``: then they load through the
host's ``checkpoint_filter_fn``), and PET keys whose site our report does not hold (e.g. more layers than our host).

Hyperformer (VL-Adapter): ``model.{encoder|decoder}.adapter_layers_hyper_net.{layer_id_embeddings, task_hypernet.
task_embeding_generator.{0,2}, LayerNorm, {self_attention|cross_attention|feed_forward}_{up|down}_sampler_hyper_net.
{weight|bias}_generator.0}`` → the stack's ``HyperNet`` (``layer_embeddings``, ``task_hypernet``, ``task_ln``,
``generators.{attn|cross_attn|ffn}.{up|down}_{w|b}``), and ``model.shared_task_embed.task_to_embeddings.{task}`` →
our task embeddings (``nlvr`` → ``nlvr2``).

Host naming: the released numbering is (stack ``encoder``/``decoder``, layer ℓ, sublayer ``attn``/``cross_attn``/
``ffn``) plus the anchor. ``site_name(stack, layer, sublayer, anchor) -> str`` maps it to our site name (the
``Site.name`` of a ``PetReport.injected`` entry); the default reads the report's own sites (by ``Site.role``, layer,
sublayer and anchor; the layer is ``Site.meta["stack_layer"]`` where the host numbers candidates across two stacks,
as VL-BART / VL-T5 do), which is right whenever our host numbers layers within a stack as the original does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from vlpeft.checkpoint import CheckpointError, LoadReport, load_state
from vlpeft.pet._base import Injected, PetReport

SiteName = Callable[[str, int, str, str], "str | None"]


@dataclass(frozen=True)
class Parsed:
    """One released key, in our terms."""

    key: str
    stack: str
    layer: int
    sublayer: str
    anchor: str
    part: str  # our parameter name inside the module: down.weight, up.bias, proj.weight, z, lora_A, lora_B
    task: str | None = None
    head: int | None = None  # multi-head down projection: which row block


_SUB = {"attn": "attn", "ff": "ffn", "self_attn": "attn", "enc_attn": "cross_attn"}
_SAMPLER = {"down_sampler": "down", "up_sampler": "up"}
_ENC_BART = r"(?:model\.)?encoder\.layers\.(?P<layer>\d+)\."
_ENC_T5 = r"encoder\.block\.(?P<layer>\d+)\.layer\.(?P<t5sub>[01])\."
_W = r"(?P<wb>weight|bias)"


# an adapter sampler's parameters: a Linear's, or a PHMLinear's (rule C, slices S — factorised: W_left / W_right —, b)
_SAMPLER_PARAM = r"(?P<wb>weight|bias|phm_rule|W|W_left|W_right|b)"
_T5_VLA = {("encoder", "0", "attn"): "attn", ("encoder", "1", "ff"): "ffn", ("decoder", "0", "attn"): "attn",
           ("decoder", "1", "enc_attn"): "cross_attn", ("decoder", "2", "ff"): "ffn"}


def _t5_vla(m: re.Match) -> dict | None:
    sub = _T5_VLA.get((m["stack"], m["t5i"], m["vsub"]))
    if sub is None:
        return None  # e.g. an ff_adapter under layer.0: not a released layout
    return dict(sub=sub, anchor="out_seq", part=f"{_SAMPLER[m['s']]}.{m['wb']}")


def _rules() -> list[tuple[re.Pattern, Callable[[re.Match], dict]]]:
    rules: list[tuple[str, Callable[[re.Match], dict]]] = []
    for enc in (_ENC_BART, _ENC_T5):
        rules += [
            (enc + rf"(?P<sub>attn|ff)_adapter_multihead_down\.(?P<head>\d+)\.{_W}",
             lambda m: dict(stack="encoder", anchor="out_seq", part=f"down.{m['wb']}", head=int(m["head"]))),
            (enc + rf"(?P<sub>attn|ff)_adapter_multihead_up\.{_W}",
             lambda m: dict(stack="encoder", anchor="out_seq", part=f"up.{m['wb']}")),
            (enc + rf"encoder_(?P<sub>attn|ff)_adapter_gating_large_x_(?P<du>down|up)\.{_W}",
             lambda m: dict(stack="encoder", anchor="gate", part=f"{m['du']}.{m['wb']}")),
            (enc + rf"encoder_(?P<sub>attn|ff)_adapter_gating_(?:middle_xy_add|small_xy_cat)\.{_W}",
             lambda m: dict(stack="encoder", anchor="gate", part=f"proj.{m['wb']}")),
            (enc + r"encoder_(?P<sub>attn|ff)_adapter_gating_middle_ia3_add",
             lambda m: dict(stack="encoder", anchor="gate", part="z")),
        ]
    vpa = rf"attn_value_parallel_adapter\.adapters\.(?P<task>[^.]+)\.(?P<s>down_sampler|up_sampler)\.{_SAMPLER_PARAM}"
    rules += [
        (r"(?:model\.)?decoder\.layers\.(?P<layer>\d+)\.encoder_attn\." + vpa,
         lambda m: dict(stack="decoder", sub="cross_attn", anchor="proj:v", part=f"{_SAMPLER[m['s']]}.{m['wb']}")),
        (r"decoder\.block\.(?P<layer>\d+)\.layer\.1\.EncDecAttention\." + vpa,
         lambda m: dict(stack="decoder", sub="cross_attn", anchor="proj:v", part=f"{_SAMPLER[m['s']]}.{m['wb']}")),
        # VL-Adapter BART sequential adapters (plain ``weight`` / ``bias``; compacters' PHM ``phm_rule``, ``W``, ``b``)
        (r"(?:model\.)?(?P<stack>encoder|decoder)\.layers\.(?P<layer>\d+)\.(?P<sub>attn|self_attn|enc_attn|ff)_adapter"
         rf"\.adapters\.(?P<task>[^.]+)\.(?P<s>down_sampler|up_sampler)\.{_SAMPLER_PARAM}",
         lambda m: dict(anchor="out_seq", part=f"{_SAMPLER[m['s']]}.{m['wb']}")),
        # VL-Adapter T5: ``{encoder|decoder}.block.{ℓ}.layer.{i}.`` with T5LayerSelfAttention's ``attn_adapter``
        # (i = 0, both stacks), T5LayerCrossAttention's ``enc_attn_adapter`` (decoder i = 1), T5LayerFF's
        # ``ff_adapter`` (the last layer: encoder 1, decoder 2)
        (r"(?P<stack>encoder|decoder)\.block\.(?P<layer>\d+)\.layer\.(?P<t5i>[012])\.(?P<vsub>attn|enc_attn|ff)_adapter"
         rf"\.adapters\.(?P<task>[^.]+)\.(?P<s>down_sampler|up_sampler)\.{_SAMPLER_PARAM}", _t5_vla),
        # VL-Adapter input prompts (BART ``model.encoder.``, T5 ``encoder.``): the generator Embedding, Lin, –, Lin
        (r"(?:model\.)?encoder\.prompt_modules\.prompts\.(?P<task>[^.]+)\.prefix_embedding\.(?P<i>\d+)\."
         + _W, lambda m: dict(stack="encoder", layer=-1, sub="block", anchor="input",
                              part=f"prefix_embedding.{m['i']}.{m['wb']}")),
        # VL-Adapter BART LoRA
        (r"(?:model\.)?(?P<stack>encoder|decoder)\.layers\.(?P<layer>\d+)\.(?P<att>self_attn|encoder_attn)\."
         r"(?P<proj>q|v)_proj\.lora_(?P<ab>A|B)s\.(?P<task>[^.]+)",
         lambda m: dict(sub="attn" if m["att"] == "self_attn" else "cross_attn", anchor=f"proj:{m['proj']}",
                        part=f"lora_{m['ab']}")),
    ]
    return [(re.compile(p + "$"), f) for p, f in rules]


_RULES = _rules()


def parse_key(key: str) -> Parsed | None:
    """The released PET key ``key`` in our terms, or None when it is not a VL-PET / VL-Adapter PET key."""
    for pat, fn in _RULES:
        m = pat.match(key)
        if m is None:
            continue
        d = fn(m)
        if d is None:
            return None
        groups = m.groupdict()
        stack = d.get("stack") or groups.get("stack")
        sub = d.get("sub")
        if sub is None:
            if groups.get("t5sub") is not None:
                sub = "attn" if groups["t5sub"] == "0" else "ffn"
                if groups.get("sub") and _SUB[groups["sub"]] != sub:
                    return None  # e.g. an ff adapter under layer.0: not a released layout
            else:
                sub = _SUB[groups["sub"]]
        layer = d["layer"] if "layer" in d else int(groups["layer"])
        return Parsed(key, stack, layer, sub, d["anchor"], d["part"], groups.get("task"), d.get("head"))
    return None


def sites_naming(report: PetReport) -> SiteName:
    """The default host naming: our report's own site for (stack role, layer, sublayer, anchor)."""
    table: dict[tuple[str, int, str, str], str] = {}
    for inj in report.injected:
        s = inj.site
        layer = int((s.meta or {}).get("stack_layer", s.layer))  # the index within the stack, as released
        table.setdefault((s.role, layer, s.sublayer, s.anchor), s.name)
    return lambda stack, layer, sublayer, anchor: table.get((stack, layer, sublayer, anchor))


def import_released(model: nn.Module, sd: Mapping[str, torch.Tensor], report: PetReport, *,
                    site_name: SiteName | None = None, prefix: str = "", path: str = "<released state dict>",
                    kind: str = "released VL-PET / VL-Adapter checkpoint", with_backbone: bool = False) -> LoadReport:
    """Load the PET tensors of a released state dict ``sd`` into the modules ``report`` injected into ``model``.

    ``prefix``: where the injection host sits inside ``model`` (the report's names are relative to the host;
    ``"backbone."`` when ``model`` is a module holding the backbone). ``site_name``: the host naming (see the module
    docstring); default ``sites_naming(report)``. A DDP ``module.`` prefix on every key is dropped.
    ``with_backbone``: the keys that are not PET keys (a whole released checkpoint: backbone, visual projector) are
    loaded too, through the loader and the host's ``checkpoint_filter_fn`` (VL-BART/T5: ``model.encoder…`` →
    ``seq2seq.model.encoder…``, prefixed with ``prefix``); those that fit nothing stay ``unexpected``.
    """
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    site_name = site_name or sites_naming(report)
    own = dict(model.named_parameters(remove_duplicate=False))
    by_site: dict[str, list[Injected]] = {}
    for inj in report.injected:
        by_site.setdefault(prefix + inj.site.name, []).append(inj)

    assign: dict[str, list[tuple[str, torch.Tensor]]] = {}  # our full name -> [(released key(s), tensor)]
    heads: dict[tuple[str, str, str | None], dict[int, tuple[str, torch.Tensor]]] = {}
    adapted: list[str] = []
    unexpected: list[str] = []
    rest: dict[str, torch.Tensor] = {}  # with_backbone: the non-PET keys, loaded as they are (after the filter)

    hyper = _hyper_bases(report, prefix)
    for key, value in sd.items():
        target = _hyper_target(key, hyper, own)
        if target is not None:  # Hyperformer: per-stack generators and the shared task embeddings
            if target:
                assign.setdefault(target, []).append((key, value))
            else:
                unexpected.append(key)
            continue
        p = parse_key(key)
        if p is None:
            if with_backbone:
                rest[prefix + key] = value
            else:
                unexpected.append(key)
            continue
        name = site_name(p.stack, p.layer, p.sublayer, p.anchor)
        injs = by_site.get(prefix + name, []) if name else []
        if not injs:
            unexpected.append(key)  # a PET key whose site our report does not hold
            continue
        site = prefix + name
        locs = _locations(site, injs, p.part, p, own, key)  # heads: the down module, resolved below
        if p.head is not None:
            for loc in locs:
                heads.setdefault((loc, p.part.split(".")[1], p.task), {})[p.head] = (key, value)
            continue
        for target in locs:
            assign.setdefault(target, []).append((key, value))

    for (loc, wb, _task), by_head in heads.items():
        n = len(by_head)
        if sorted(by_head) != list(range(n)):
            k0 = next(iter(by_head.values()))[0]
            raise CheckpointError(f"{path}: multi-head down projection near {k0} has heads {sorted(by_head)}; "
                                  f"expected heads 0..{n - 1} with none missing (a truncated checkpoint?)")
        keys = [by_head[h][0] for h in range(n)]
        stacked = torch.cat([by_head[h][1] for h in range(n)], dim=0)
        src = "+".join(keys)
        if f"{loc}.{wb}" in own:  # a plain bottleneck: the row-stack is its down map
            assign.setdefault(f"{loc}.{wb}", []).append((src, stacked))
            adapted.append(f"{loc}.{wb} ← row-stack of {n} heads ({keys[0]} … {keys[-1]})")
            continue
        ours = sorted(int(m.group(1)) for k in own if (m := re.fullmatch(re.escape(loc) + r"\.(\d+)\." + wb, k)))
        if not ours or ours != list(range(len(ours))) or stacked.shape[0] % len(ours):
            raise CheckpointError(f"{path}: {keys[0]}: the module at {loc} has no down map that takes "
                                  f"{stacked.shape[0]} stacked rows; build it with r = {stacked.shape[0]}")
        for h, block in enumerate(stacked.chunk(len(ours), dim=0)):
            assign.setdefault(f"{loc}.{h}.{wb}", []).append((src, block.contiguous()))
        if len(ours) != n:
            adapted.append(f"{loc}.*.{wb} ← {n} released heads row-stacked and split into our {len(ours)}")

    # one parameter object may be reached by several names and several released keys: copies must agree
    groups: dict[int, list[tuple[str, str, torch.Tensor]]] = {}
    for target, srcs in assign.items():
        for src, t in srcs:
            groups.setdefault(id(own[target]), []).append((target, src, t))
    out: dict[str, torch.Tensor] = {}
    for entries in groups.values():
        target, src0, t0 = entries[0]
        for _, src, t in entries[1:]:
            if src == src0:
                continue
            if t.shape != t0.shape or not torch.equal(t, t0):
                raise CheckpointError(
                    f"{path}: {src0} and {src} land on one shared parameter ({target}) but differ; the checkpoint "
                    f"holds distinct per-task modules: import it into a per-task recipe (sharing='per_task', e.g. "
                    f"pet=vl_adapter_multiple / lora_multiple) with the checkpoint's task names")
        dups = sorted({s for _, s, _ in entries} - {src0})
        if dups:
            adapted.append(f"{target} ← one copy of {1 + len(dups)} equal keys ({src0}; also {', '.join(dups)})")
        out[target] = t0

    rep = load_state(model, {**rest, **out}, path, kind)
    pet_names = {prefix + n for i in report.injected for n in i.param_names}
    filled = {id(own[n]) for n in out}
    rep.missing = sorted(n for n in pet_names if n in own and id(own[n]) not in filled)
    rep.unexpected = unexpected + rep.unexpected
    rep.adapted += adapted
    return rep


# --- Hyperformer (VL-Adapter ``adapters/adapter_hypernetwork.py``): one generator per stack, task embeddings shared
_HYPER = re.compile(r"^(?:model\.)?(encoder|decoder)\.adapter_layers_hyper_net\.(.+)$")
_HYPER_TASK = re.compile(r"^(?:model\.)?shared_task_embed\.task_to_embeddings\.([^.]+)$")
_HYPER_BLOCK = {"self_attention": "attn", "cross_attention": "cross_attn", "feed_forward": "ffn"}
# released part → ours, below the HyperAdapter's ``hypernet``; the generated matrices have the same layout in both
# (down: (r, d) and bias r; up: (d, r) and bias d), so the generator rows map one to one
_HYPER_PARTS: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"layer_id_embeddings\.weight"), lambda m: "layer_embeddings.weight"),
    (re.compile(r"task_hypernet\.task_embeding_generator\.(0|2)\.(weight|bias)"),
     lambda m: f"task_hypernet.{m.group(1)}.{m.group(2)}"),
    (re.compile(r"LayerNorm\.(weight|bias)"), lambda m: f"task_ln.{m.group(1)}"),
    (re.compile(r"(self_attention|cross_attention|feed_forward)_(up|down)_sampler_hyper_net\.(weight|bias)_generator"
                r"\.0\.(weight|bias)"),
     lambda m: f"generators.{_HYPER_BLOCK[m.group(1)]}.{m.group(2)}_{m.group(3)[0]}.{m.group(4)}"),
)
_HYPER_TASK_NAMES = {"nlvr": "nlvr2"}  # the originals' task keys → ours (batch["task"])


def _hyper_bases(report: PetReport, prefix: str) -> dict[str, str]:
    """Where our Hyperformer modules live: role (encoder / decoder) → the ``…hypernet.`` path of one of its
    adapters, and ``"tasks"`` → the ``…task_embeddings.task_to_embeddings.`` path."""
    out: dict[str, str] = {}
    for inj in report.injected:
        for n in inj.param_names:
            if ".hypernet." in n:
                out.setdefault(inj.site.role, prefix + n[:n.index(".hypernet.") + len(".hypernet.")])
            if ".task_embeddings.task_to_embeddings." in n:
                out.setdefault("tasks", prefix + n[:n.index("task_to_embeddings.") + len("task_to_embeddings.")])
    return out


def _hyper_target(key: str, bases: Mapping[str, str], own: Mapping[str, nn.Parameter]) -> str | None:
    """Our name for a released Hyperformer key; "" when it is one but our model has no place for it (unexpected);
    None when the key is not a Hyperformer key."""
    m = _HYPER_TASK.match(key)
    if m:
        base = bases.get("tasks")
        if base is None:
            return ""
        task = m.group(1) if base + m.group(1) in own else _HYPER_TASK_NAMES.get(m.group(1), m.group(1))
        return base + task if base + task in own else ""
    m = _HYPER.match(key)
    if not m:
        return None
    base = bases.get(m.group(1))
    for pat, ours in _HYPER_PARTS:
        part = pat.fullmatch(m.group(2))
        if part and base is not None and base + ours(part) in own:
            return base + ours(part)
    return ""


def _locations(site: str, injs: list[Injected], part: str, p: Parsed, own: Mapping[str, nn.Parameter],
               key: str) -> list[str]:
    """Our full parameter names (for a head: the down map's module path) that the released key ``key`` fills."""
    leaf = part.split(".")[0] if p.head is not None else part
    names = [n for i in injs for n in i.param_names]
    rel = [n[len(site) + 1:] if n.startswith(site + ".") else n for n in names]
    # candidate stems: "" for a plain module, "tasks.<t>." for a task switch
    switched = any(r.startswith("tasks.") for r in rel)
    if switched:
        tasks = sorted({r.split(".")[1] for r in rel if r.startswith("tasks.")}
                       | {n.split(".")[len(site.split(".")) + 1] for n in own if n.startswith(site + ".tasks.")})
        if p.task is not None and p.task in tasks:
            stems = [f"tasks.{p.task}."]
        elif p.task is not None:
            raise CheckpointError(f"{key}: task {p.task!r} has no module at {site} (our tasks: {tasks}); build the "
                                  f"recipe with the checkpoint's task names (config `datasets`)")
        else:
            stems = [f"tasks.{t}." for t in tasks]  # a task-free tensor fills every task copy
    else:
        stems = [""]
    found = []
    for stem in stems:
        base = f"{site}.{stem}{leaf}"
        if p.head is not None:
            ok = f"{base}.{part.split('.')[1]}" in own or any(k.startswith(base + ".0.") for k in own)
        else:
            ok = base in own
        if not ok:
            have = sorted({r.split(".", 2)[-1] if r.startswith("tasks.") else r for r in rel})
            raise CheckpointError(f"{key}: the module at {site} has no parameter {stem}{part} (it has {have}); the "
                                  f"checkpoint's method differs from the recipe's (e.g. another gate granularity: "
                                  f"pick the matching vl_pet_* preset)")
        found.append(base)
    return found


__all__ = ["Parsed", "import_released", "parse_key", "sites_naming"]
