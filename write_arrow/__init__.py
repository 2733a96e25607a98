"""Converters from the public dataset releases to ViLT-format Arrow IPC files (see DATA.md).

``python -m write_arrow <dataset> --src RAW_DIR --dst ARROW_DIR [--seed N]``; each converter is also a plain
function returning ``{arrow name: Written(path, rows)}``.
"""

from ._common import WriteArrowError, Written
from .boolq import write_boolq, write_boolq_synthetic
from .csqa import write_csqa, write_csqa_synthetic
from .gqa import write_gqa
from .gsm8k import write_gsm8k, write_gsm8k_synthetic
from .karpathy import write_coco, write_f30k
from .nlvr2 import write_nlvr2
from .scienceqa import write_scienceqa, write_scienceqa_synthetic
from .snli_ve import write_snli_ve
from .synthetic import write_synthetic
from .synthetic_video import write_synthetic_video
from .video import write_how2qa, write_tvc, write_tvqa, write_video, write_yc2c
from .vqa import write_vqa

__all__ = [
    "WriteArrowError",
    "Written",
    "write_boolq",
    "write_boolq_synthetic",
    "write_coco",
    "write_csqa",
    "write_csqa_synthetic",
    "write_f30k",
    "write_gqa",
    "write_gsm8k",
    "write_gsm8k_synthetic",
    "write_nlvr2",
    "write_scienceqa",
    "write_scienceqa_synthetic",
    "write_snli_ve",
    "write_synthetic",
    "write_synthetic_video",
    "write_how2qa",
    "write_tvc",
    "write_tvqa",
    "write_video",
    "write_yc2c",
    "write_vqa",
]
