"""Writes tests/fixtures/lavin_reference.safetensors: LaVIN-DAS's own modules run tiny in fp64 (tests/test_lavin.py).

    python scripts/lavin_reference.py <checkout of github.com/DoubtedSteam/DAS> [out.safetensors]

The original files (``LaVIN-DAS/das/mm_model.py``, ``das/mm_adapter.py``, ``das/mm_eval_model.py``,
``clip/model.py``) are copied into a temporary folder and run there, with four edits that change no formula:
``.half()`` → fp64 (the run is fp64), the hard-coded CLIP width 1024 → 16 (a tiny CLIP), CLIP's fp16-guarding
LayerNorm cast removed (it would feed fp32 into fp64 weights), and stubs for what a CPU run lacks (``fairscale``'s
model-parallel layers, which mm_model imports but does not use, and ``clip.load``, which returns a tiny
``VisionTransformer`` of the original's ``clip/model.py``). Nothing of the originals is kept in this repository.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

EDITS = {  # file → (old, new) pairs
    "das/mm_model.py": [(".half()", ".to(REF_DTYPE)"), ("AdapterMLP(1024,", "AdapterMLP(CLIP_WIDTH,")],
    "das/mm_eval_model.py": [("AdapterMLP(1024,", "AdapterMLP(CLIP_WIDTH,")],  # imported by mm_adapter only
    "das/mm_adapter.py": [(".half()", ".to(REF_DTYPE)"), ("RepAdapter_Router(1024,", "RepAdapter_Router(CLIP_WIDTH,"),
                          ("RepAdapter(1024,", "RepAdapter(CLIP_WIDTH,")],
    "clip/model.py": [("ret = super().forward(x.type(torch.float32))", "ret = super().forward(x)")],
}
STUBS = {
    "refcfg.py": "import torch\nREF_DTYPE = torch.float64\nCLIP_WIDTH = 16\n",
    "das/__init__.py": "",
    "fairscale/__init__.py": "", "fairscale/nn/__init__.py": "", "fairscale/nn/model_parallel/__init__.py": "",
    "fairscale/nn/model_parallel/initialize.py": "",
    "fairscale/nn/model_parallel/layers.py": "ParallelEmbedding = RowParallelLinear = ColumnParallelLinear = None\n",
    "clip/__init__.py": textwrap.dedent('''\
        from torch import nn
        from .model import VisionTransformer


        class _Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.visual = VisionTransformer(input_resolution=32, patch_size=8, width=16, layers=8, heads=2,
                                                output_dim=8)
                self.transformer = nn.Identity()  # the text tower LaVIN deletes

            def encode_image(self, image):
                return self.visual(image.type(self.visual.conv1.weight.dtype))


        def load(name, *args, **kwargs):
            return _Tiny(), None
        '''),
}
RUN = textwrap.dedent('''\
    import sys, warnings
    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file
    from das.mm_model import ModelArgs, Transformer
    from das.mm_adapter import set_MMAdapter, set_Clip_Adapter

    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=3, n_heads=4, vocab_size=120, multiple_of=32, norm_eps=1e-6,
                                  hidden_proj=16, max_seq_len=64))
    del model.backbone.transformer
    set_MMAdapter(model, "attn", dim=4, s=1, t=10.)
    set_Clip_Adapter(model.backbone.visual, "router", dim=4, s=1, t=10.)
    model = model.double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():  # every weight off its init (zero up-projections included)
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            p.copy_(p.half().double())  # fp16-representable values: stored exactly below
    model.layers[1].skipped_flag = 1.
    prompts, answers = [[1, 11, 12, 13, 14], [1, 21, 22, 23]], [[31, 32, 33, 2], [41, 42, 2]]
    seqlen = 24
    examples = torch.zeros(2, seqlen, dtype=torch.long)
    labels = torch.zeros(2, seqlen, dtype=torch.long)
    for b, (p, a) in enumerate(zip(prompts, answers)):
        examples[b, :len(p + a)] = torch.tensor(p + a)
        labels[b, len(p):len(p + a)] = torch.tensor(a)
    images = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64).half().double()
    prefix_img, prefix_nonimg = torch.tensor([5, 6]), torch.tensor([5, 6, 7, 8])
    out = {}
    model.output.register_forward_hook(lambda m, a, o: out.__setitem__("logits", o))
    model.adapter_proj.register_forward_hook(lambda m, a, o: out.__setitem__("img", o))

    def run(ex, lab, im, ind):
        with torch.no_grad():
            loss = model(ex, lab, images=im, prefix_img=prefix_img, prefix_nonimg=prefix_nonimg, img_indicators=ind)
        return loss.reshape(1), out["logits"], out["img"]

    def answer_logits(logits, b, n_front):  # the logits predicting sample b's answer tokens
        start = n_front + len(prompts[b])
        return logits[b, start - 1:start - 1 + len(answers[b])]

    ref = {}
    ref["pair_loss"], logits, ref["pair_image_tokens"] = run(examples, labels, images, [1, 0])
    n_img = ref["pair_image_tokens"].shape[1]
    ref["pair_logits_0"] = answer_logits(logits, 0, 1 + len(prefix_img) + n_img)
    ref["pair_logits_1"] = answer_logits(logits, 1, 1 + len(prefix_nonimg))
    ref["both_loss"], logits, ref["both_image_tokens"] = run(examples, labels, images, [1, 1])
    ref["both_logits_1"] = answer_logits(logits, 1, 1 + len(prefix_img) + n_img)
    ref["single_loss"], logits, ref["single_image_tokens"] = run(examples[:1], labels[:1], images[:1], [1])
    ref["single_logits_0"] = answer_logits(logits, 0, 1 + len(prefix_img) + n_img)
    ref["images"] = images.half()
    for k, v in model.state_dict().items():
        if k != "scores" and not k.endswith("freqs_cis"):
            ref["w." + k] = v.half()
    save_file({k: v.contiguous() for k, v in ref.items()}, sys.argv[1])
    print({k: float(v) for k, v in ref.items() if k.endswith("loss")})
    ''')


def main(repo: str, out: str) -> None:
    src = Path(repo) / "LaVIN-DAS"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, text in STUBS.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        for rel, edits in EDITS.items():
            text = (src / rel).read_text()
            for old, new in edits:
                if old not in text:
                    raise SystemExit(f"{rel}: {old!r} not found; is {repo} DoubtedSteam/DAS?")
                text = text.replace(old, new)
            if rel.startswith("das/"):
                text = "from refcfg import REF_DTYPE, CLIP_WIDTH\n" + text
            (root / rel).write_text(text)
        (root / "run.py").write_text(RUN)
        subprocess.run([sys.executable, "run.py", str(Path(out).resolve())], cwd=root, check=True)


if __name__ == "__main__":
    here = Path(__file__).resolve().parent.parent
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(here / "tests/fixtures/lavin_reference.safetensors"))
