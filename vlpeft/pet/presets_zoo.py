"""Presets of the module zoo: the papers' methods as ``Recipe``s with their scripts' hyper-parameters
(spec §8.5 method → config mapping, §3.5 VL-PET CLI, §4 VL-Adapter scripts, §5 Routing-VLPEFT scripts).

Importing this module registers every zoo module in ``PETS`` and these presets in ``PRESETS``. Anchors used: the
existing ``out_seq``, and the proposed ``proj:q|k|v|qkv|ff_out``, ``gate`` and ``input`` (``_sites_hf.EXT_ANCHORS``).
Presets whose options differ between families (VL-PET: BART vs T5) hold one spec per family with ``required=False``;
every spec that could legitimately miss a backbone is non-required (the report's ``unmatched`` list says which
modules found no site); a backbone that offers none of a preset's sites is refused by ``inject`` (``PetError``).

Per-task presets (``vl_adapter_multiple`` …) take the task names from the active ``loss_names`` (else ``datasets``).
Every preset makes its own ``SharePool`` (Hyperformer generators per stack, RT's one adapter per GPT-2 block).
Recipe ``base_policy`` strings use ``vlpeft.pet.unfreeze`` grammar (``norms:encoder``, ``norms+bias:c_attn``).
The visual projector (always trained in VL-BART/T5) is the backbone's business, not the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# registering the modules (import order matters only for the registry's contents)
from vlpeft.pet import bottleneck, compacter, gates, hyperformer, ia3, lora, multihead_adapter  # noqa: F401
from vlpeft.pet import prompt_tuning, routing  # noqa: F401
from vlpeft.pet._base import Recipe, register_preset
from vlpeft.pet._sites_hf import SharePool, ZooSpec
from vlpeft.tasks.heads import active_tasks
from vlpeft.sections import declared_keys, key, take

ATTN = ("attn", "cross_attn")
ALL_SUBLAYERS = ("attn", "cross_attn", "ffn")
QV_MASK = (True, False, True)


# The presets' settings (``vlpeft.sections``): each dataclass's fields are the keys its presets read, with their
# defaults (the sacred base config collects them from here). A preset's builder gets its settings.
@dataclass(frozen=True)
class ZooTasks:
    """The run's tasks, which per-task modules are built for (keys the base config owns)."""

    loss_names: Any = key(default=None, shared=True)
    datasets: Any = key(default=(), shared=True)


@dataclass(frozen=True)
class LoraSettings(ZooTasks):
    lora_r: int = 128
    lora_alpha: float = 32
    lora_dropout: float = 0.1
    merge_pet: bool = False  # test_only folds the LoRA deltas into the projection weights (vlpeft.runner.merge_pet)


@dataclass(frozen=True)
class ZooNoKeys(ZooTasks):
    """Presets without options of their own (IA3, BitFit)."""


@dataclass(frozen=True)
class AdapterSettings(ZooTasks):
    adapter_reduction: int = 8


@dataclass(frozen=True)
class CompacterSettings(AdapterSettings):
    phm_n: int = 2
    phm_c_init_std: float = 0.01


@dataclass(frozen=True)
class HyperSettings(AdapterSettings):
    hyper_proj_dim: int = 8
    hyper_task_dim: int = 512
    hyper_hidden: int = 128


@dataclass(frozen=True)
class PromptSettings(ZooTasks):
    prompt_len: int = 40
    prompt_mid: int = 800


@dataclass(frozen=True)
class VlPetSettings(ZooTasks):
    vl_pet_down_dim: int | None = None  # None: the family's (BART 96, T5 192)
    vl_pet_heads: int = 4
    vl_pet_gate_dim: int | None = None
    vl_pet_gate_scale: float | None = None  # None: the family's (BART 1.0, T5 0.3)
    vl_pet_vpa_dim: int = 96


@dataclass(frozen=True)
class VlPetCompacterSettings(VlPetSettings, CompacterSettings):
    pass


@dataclass(frozen=True)
class RoutingSettings(ZooTasks):
    routing_r: int = 128
    routing_alpha: float = 128
    routing_fusion_layers: Any = None
    routing_adapter_r: int = 128
    routing_add_res: bool = False


def _tasks(config: ZooTasks | Mapping[str, Any]) -> tuple[str, ...]:
    """The task keys per-task modules are built for: the active ``loss_names`` tasks — the names batches carry in
    ``batch["task"]`` (``caption`` for the ``coco`` dataset) — else the ``datasets`` list."""
    s = take(ZooTasks, config)
    loss_names = s.loss_names
    try:
        active = tuple(active_tasks(loss_names)) if isinstance(loss_names, Mapping) else ()
    except ValueError:  # pre-training keys (itm / mlm): the run itself refuses them, name tasks by dataset here
        active = ()
    if active:
        return active
    tasks = s.datasets or ()
    if isinstance(tasks, str):
        tasks = (tasks,)
    return tuple(tasks)


def _layers(value: Any) -> tuple[int, ...] | None:
    return None if value in (None, "all") else tuple(int(i) for i in value)


# --- LoRA / IA3 (projection sites) ----------------------------------------------------------------------------------
LORA_KEYS = declared_keys(LoraSettings)
# tiny test options (tests/test_registries.py builds each preset on its backbone with them)
_LORA_TEST = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0)


def _lora_specs(config, sharing, tasks=()):
    s = take(LoraSettings, config)
    opts = dict(r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout, sharing=sharing, tasks=tasks)
    return (ZooSpec("lora", ("proj:q", "proj:v"), opts, sublayers=ATTN, required=False),
            ZooSpec("lora", ("proj:qkv",), dict(opts, qkv_mask=QV_MASK), sublayers=ATTN, required=False))


@register_preset("lora", spec=LoraSettings,
                 test=dict(backbone="test_vl_t5", config=_LORA_TEST))
def preset_lora(config):
    """VL-Adapter single LoRA: q and v of every attention (r = 128, α = 32, dropout 0.1) + all biases (M7, §9 7)."""
    return Recipe("lora", _lora_specs(config, "shared"), base_policy="bias")


@register_preset("lora_multiple", spec=LoraSettings,
                 test=dict(backbone="test_vl_bart", config=dict(_LORA_TEST, datasets=["vqa", "gqa"])))
def preset_lora_multiple(config):
    """VL-Adapter multiple LoRA: one (A, B) per task."""
    return Recipe("lora_multiple", _lora_specs(config, "per_task", _tasks(config)), base_policy="bias")


@register_preset("ia3", spec=ZooNoKeys,
                 test=dict(backbone="test_clip_t5", config={}))
def preset_ia3(config):
    """peft's IA3: k, v (outputs) and the second FFN linear (input); fused qkv gets one 3d vector."""
    return Recipe("ia3", (ZooSpec("ia3", ("proj:k", "proj:v", "proj:ff_out"), required=False),
                          ZooSpec("ia3", ("proj:qkv",), required=False)), base_policy="none")


@register_preset("bitfit", spec=ZooNoKeys,
                 test=dict(backbone="test_vl_bart", config={}))
def preset_bitfit(config):
    """BitFit: no modules, every bias (M9)."""
    return Recipe("bitfit", (), base_policy="bias")


# --- VL-Adapter family (sublayer outputs) ---------------------------------------------------------------------------
ADAPTER_KEYS = declared_keys(AdapterSettings)
_ADAPTER_TEST = dict(adapter_reduction=4, datasets=["vqa", "gqa"])


def _adapter_specs(config, module, sharing, tasks=(), **extra):
    red = take(AdapterSettings, config).adapter_reduction
    base = dict(reduction=red, sharing=sharing, tasks=tasks, **extra)
    if module == "bottleneck":  # BART's N(0, 0.02) vs T5's PyTorch-default linears (spec §1.1)
        return (ZooSpec(module, ("out_seq",), dict(base, init="legacy_bart"), sublayers=ALL_SUBLAYERS,
                        not_families=("t5",), required=False),
                ZooSpec(module, ("out_seq",), dict(base, init="torch"), sublayers=ALL_SUBLAYERS, families=("t5",),
                        required=False))
    return (ZooSpec(module, ("out_seq",), base, sublayers=ALL_SUBLAYERS),)


@register_preset("vl_adapter", spec=AdapterSettings,
                 test=dict(backbone="test_vl_bart", config=_ADAPTER_TEST))
def preset_vl_adapter(config):
    """VL-Adapter single adapter: M1 r = d/8 on every sublayer output, shared by tasks; all norms (M1)."""
    return Recipe("vl_adapter", _adapter_specs(config, "bottleneck", "shared"), base_policy="norms")


@register_preset("vl_adapter_multiple", spec=AdapterSettings,
                 test=dict(backbone="test_vl_t5", config=_ADAPTER_TEST))
def preset_vl_adapter_multiple(config):
    """VL-Adapter multiple adapters: one M1 per task per site."""
    return Recipe("vl_adapter_multiple", _adapter_specs(config, "bottleneck", "per_task", _tasks(config)),
                  base_policy="norms")


@register_preset("vl_adapter_half_up", spec=AdapterSettings,
                 test=dict(backbone="test_vl_bart", config=_ADAPTER_TEST))
def preset_vl_adapter_half_up(config):
    """VL-Adapter half-shared adapters: per task, one shared up layer (no script; spec §6.2 8.36%)."""
    return Recipe("vl_adapter_half_up", _adapter_specs(config, "bottleneck", "half_up", _tasks(config)),
                  base_policy="norms")


@register_preset("vl_adapter_half_down", spec=AdapterSettings,
                 test=dict(backbone="test_vl_t5", config=_ADAPTER_TEST))
def preset_vl_adapter_half_down(config):
    """VL-Adapter half-shared adapters with a shared down layer."""
    return Recipe("vl_adapter_half_down", _adapter_specs(config, "bottleneck", "half_down", _tasks(config)),
                  base_policy="norms")


COMPACTER_KEYS = declared_keys(CompacterSettings)


@register_preset("compacter", spec=CompacterSettings,
                 test=dict(backbone="test_vl_bart", config=_ADAPTER_TEST))
def preset_compacter(config):
    """VL-Adapter single compacter: PHM n = 2, own rule per layer, unfactorised, r = d/8; all norms (M5)."""
    s = take(CompacterSettings, config)
    specs = _adapter_specs(s, "compacter", "shared", n=s.phm_n, c_init_std=s.phm_c_init_std, zero_up=False)
    return Recipe("compacter", specs, base_policy="norms")


@register_preset("compacter_multiple", spec=CompacterSettings,
                 test=dict(backbone="test_vl_t5", config=_ADAPTER_TEST))
def preset_compacter_multiple(config):
    """VL-Adapter multiple compacters (``multiple_compacters.sh``): one compacter per task per site."""
    s = take(CompacterSettings, config)
    specs = _adapter_specs(s, "compacter", "per_task", _tasks(s), n=s.phm_n, c_init_std=s.phm_c_init_std,
                           zero_up=False)
    return Recipe("compacter_multiple", specs, base_policy="norms")


HYPER_KEYS = declared_keys(HyperSettings)


@register_preset("hyperformer", spec=HyperSettings,
                 test=dict(backbone="test_vl_t5", config=dict(_ADAPTER_TEST, hyper_task_dim=8, hyper_hidden=8)))
def preset_hyperformer(config):
    """Hyperformer: generated M1 weights per (task, layer, block type), p = 8, r = d/8; all norms (M6).
    Sites must carry ``meta["num_layers"]`` (the stack's depth)."""
    s = take(HyperSettings, config)
    opts = dict(reduction=s.adapter_reduction, proj=s.hyper_proj_dim, task_dim=s.hyper_task_dim,
                hidden=s.hyper_hidden, tasks=_tasks(s), pool=SharePool())
    return Recipe("hyperformer", (ZooSpec("hyperformer", ("out_seq",), opts, sublayers=ALL_SUBLAYERS),),
                  base_policy="norms")


PROMPT_KEYS = declared_keys(PromptSettings)
_PROMPT_TEST = dict(prompt_len=3, prompt_mid=8, datasets=["vqa", "gqa"])


def _prompt_recipe(name: str, config, **placing) -> Recipe:
    s = take(PromptSettings, config)
    opts = dict(length=s.prompt_len, mid=s.prompt_mid, **placing)
    return Recipe(name, (ZooSpec("prompt", ("input",), dict(opts, init="legacy_bart"), not_families=("t5",),
                                 required=False),
                         ZooSpec("prompt", ("input",), dict(opts, init="torch"), families=("t5",),
                                 required=False)), base_policy="none")


@register_preset("prompt", spec=PromptSettings,
                 test=dict(backbone="test_vl_bart", config=_PROMPT_TEST))
def preset_prompt(config):
    """VL-Adapter single prompt: L = 40 input prompts through Lin(d→800)–tanh–Lin(800→d) (M8)."""
    return _prompt_recipe("prompt", config)


@register_preset("prompt_multiple", spec=PromptSettings,
                 test=dict(backbone="test_vl_t5", config=_PROMPT_TEST))
def preset_prompt_multiple(config):
    """VL-Adapter multiple prompts (``multiple_prompts.sh``): one prompt generator per task."""
    return _prompt_recipe("prompt_multiple", config, sharing="per_task", tasks=_tasks(config))


# --- VL-PET ---------------------------------------------------------------------------------------------------------
VL_PET_KEYS = declared_keys(VlPetSettings)
_VL_PET_TEST = dict(vl_pet_down_dim=8, vl_pet_gate_dim=8, vl_pet_vpa_dim=8, adapter_reduction=4)
_VL_PET_GRAN = {"small": "small", "middle_x": "middle_x", "middle_y": "middle_y", "large": "large"}


def _vl_pet(config, granularity: str) -> Recipe:
    s = take(VlPetSettings, config)
    specs = []
    for t5 in (False, True):
        fam = dict(families=("t5",)) if t5 else dict(not_families=("t5",))
        r = s.vl_pet_down_dim or (192 if t5 else 96)
        init = "zero_up" if t5 else "legacy_bart"
        scale = s.vl_pet_gate_scale or (0.3 if t5 else 1.0)
        gate = dict(granularity=granularity, scale=scale, init="legacy_t5" if t5 else "legacy_bart")
        if granularity == "large":
            gate["rank"] = s.vl_pet_gate_dim or r
        specs += [
            ZooSpec("multihead_adapter", ("out_seq",), dict(r=r, heads=s.vl_pet_heads, init=init),
                    sublayers=("attn", "ffn"), stacks=("encoder",), required=False, **fam),
            ZooSpec("gate", ("gate",), gate, sublayers=("attn", "ffn"), stacks=("encoder",), required=False, **fam),
            ZooSpec("bottleneck", ("proj:v",), dict(r=s.vl_pet_vpa_dim, inner_skip=False, init=init),
                    sublayers=("cross_attn",), stacks=("decoder",), required=False, **fam),
        ]
    return Recipe(f"vl_pet_{granularity}", tuple(specs), base_policy="norms:encoder")


for _g in _VL_PET_GRAN:
    def _make(g: str):
        def preset(config):
            return _vl_pet(config, g)
        preset.__doc__ = (
            f"VL-PET-{g}: multi-head adapter (encoder attn/ffn outputs) × {g} gate, decoder cross-attention value "
            f"adapter, encoder norms (spec §3). Stacks are selected by ``Site.role``: ViLT's single stream and "
            f"CLIP+BERT's PLM count as the encoder, CLIP+T5's encoder / decoder as such, CLIP+LLaMA's PLM as a "
            f"decoder. The value adapter needs decoder cross-attention (CLIP+T5); on ViLT and CLIP+BERT it is "
            f"reported as unmatched. CLIP+LLaMA and METER offer no VL-PET site: injection is refused (PetError).")
        return preset
    register_preset(f"vl_pet_{_g}", spec=VlPetSettings,
                    test=dict(backbone="test_vl_t5", config=_VL_PET_TEST))(_make(_g))


def _vl_pet_compacter(config, granularity: str) -> Recipe:
    """VL-PET Table 9 "Compacter + G + LW" (BART): compacters (n = 2, r = d/8) on the encoder attention / FFN outputs
    × the gate, a compacter as the decoder's cross-attention value adapter (parallel to ``v_proj``: the only design
    that reproduces the reported 2.08 / 2.07 / 3.28 %, spec §6.2), encoder norms."""
    s = take(VlPetCompacterSettings, config)
    comp = dict(reduction=s.adapter_reduction, n=s.phm_n, c_init_std=s.phm_c_init_std, zero_up=False)
    gate = dict(granularity=granularity, scale=s.vl_pet_gate_scale or 1.0, init="legacy_bart")
    if granularity == "large":
        gate["rank"] = s.vl_pet_gate_dim or 96
    return Recipe(f"vl_pet_compacter_{granularity}", (
        ZooSpec("compacter", ("out_seq",), comp, sublayers=("attn", "ffn"), stacks=("encoder",)),
        ZooSpec("gate", ("gate",), gate, sublayers=("attn", "ffn"), stacks=("encoder",)),
        ZooSpec("compacter", ("proj:v",), dict(comp, inner_skip=False), sublayers=("cross_attn",),
                stacks=("decoder",), required=False)), base_policy="norms:encoder")


for _g in _VL_PET_GRAN:
    def _make_c(g: str):
        def preset(config):
            return _vl_pet_compacter(config, g)
        preset.__doc__ = _vl_pet_compacter.__doc__
        return preset
    register_preset(f"vl_pet_compacter_{_g}", spec=VlPetCompacterSettings,
                    test=dict(backbone="test_vl_bart", config=_VL_PET_TEST))(_make_c(_g))


# --- Routing-VLPEFT -------------------------------------------------------------------------------------------------
ROUTING_KEYS = declared_keys(RoutingSettings)
_ROUTING_TEST = dict(routing_r=4, routing_alpha=4, routing_adapter_r=4)


def _routing_lora(config, fn):
    s = take(RoutingSettings, config)
    opts = dict(r=s.routing_r, alpha=s.routing_alpha, dropout=0.0, routing=fn)
    layers = _layers(s.routing_fusion_layers)
    return Recipe(f"routing_lora_{fn}", (
        ZooSpec("routing_lora", ("proj:qkv",), dict(opts, qkv_mask=QV_MASK), sublayers=("attn",), layers=layers,
                required=False),
        ZooSpec("routing_lora", ("proj:q", "proj:v"), opts, sublayers=("attn",), layers=layers, required=False)),
        base_policy="norms+bias:c_attn+bias:query+bias:value")


def _routing_adapter(config, fn):
    """``fn=None``: RT's adapter with routing off (``rt_adapter``: what the released RoBERTa adapter script runs)."""
    module, name = ("routing_adapter", f"routing_adapter_{fn}") if fn else ("bottleneck", "rt_adapter")
    s = take(RoutingSettings, config)
    base = dict(r=s.routing_adapter_r, init="legacy_bart", **({"routing": fn} if fn else {}))
    # GPT-2 (and every other family): one gelu_new adapter per block, shared by its attention and MLP sites, with the
    # inner skip. RoBERTa (RT's encoder adapter): one per sublayer, gelu, no inner skip unless `routing_add_res`
    # (RT `--add_res`): the adapter output replaces the frozen sublayer output (spec §2 M10).
    return Recipe(name, (
        ZooSpec(module, ("out_seq",), dict(base, act="gelu_new", inner_skip=True, share_sites="block", pool=SharePool()),
                sublayers=("attn", "ffn"), not_families=("roberta",), required=False),
        ZooSpec(module, ("out_seq",), dict(base, act="gelu", inner_skip=bool(s.routing_add_res)),
                sublayers=("attn", "ffn"), families=("roberta",), required=False)),
        base_policy="norms")


for _fn in ("add", "mul", "mul_expand", "vl"):
    def _make_rl(fn: str):
        def preset(config):
            return _routing_lora(config, fn)
        preset.__doc__ = f"RT LoRA-routing ({fn}, beforeB): q/v LoRA r = 128, α = 128 reading x_v (spec §2 M10, §5)."
        return preset

    def _make_ra(fn: str):
        def preset(config):
            return _routing_adapter(config, fn)
        preset.__doc__ = (f"RT adapter-routing ({fn}), r = 128: GPT-2 (and other families) one adapter per block shared "
                          f"by attn and ffn; RoBERTa one per sublayer replacing its output unless routing_add_res (§2 M10).")
        return preset
    # needs_context: what the modules read from the backbone's pet_context (checked against its `context` meta)
    register_preset(f"routing_lora_{_fn}", spec=RoutingSettings, needs_context=("x_v",),
                    test=dict(backbone="test_vit_roberta", config=_ROUTING_TEST))(_make_rl(_fn))
    register_preset(f"routing_adapter_{_fn}", spec=RoutingSettings, needs_context=("x_v",),
                    test=dict(backbone="test_vit_gpt2", config=_ROUTING_TEST))(_make_ra(_fn))


@register_preset("rt_adapter", spec=RoutingSettings,
                 test=dict(backbone="test_vit_roberta", config=_ROUTING_TEST))
def preset_rt_adapter(config):
    """RT's adapter with routing off (the released RoBERTa adapter script, whose routing flag is stale; spec §5):
    the routing_adapter_* placement and options without x_v."""
    return _routing_adapter(config, None)


ZOO_PRESETS = (["lora", "lora_multiple", "ia3", "bitfit", "vl_adapter", "vl_adapter_multiple", "vl_adapter_half_up",
                "vl_adapter_half_down", "compacter", "hyperformer", "prompt"]
               + [f"vl_pet_{g}" for g in _VL_PET_GRAN]
               + [f"routing_{k}_{fn}" for k in ("lora", "adapter") for fn in ("add", "mul", "mul_expand", "vl")]
               + ["rt_adapter"])

__all__ = ["ZOO_PRESETS"]
