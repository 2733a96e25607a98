"""The arrow files each dataset's splits read (no imports: the config's ``data_splits`` default is this table,
so every entry can be overridden on the command line)."""

from __future__ import annotations

# Which arrow files (stems under data_root) each split reads. Held-out defaults (seeds.md §8.12): the val split,
# used for checkpoint selection and the search reward, never overlaps train; test is the benchmark's test split.
# Differences from the originals (§2.7): NLVR2 val = dev (DAS used nlvr2_train), F30K train = train only (the
# originals also trained on val), GQA val = gqa_val and test = test-dev (DVP used test-dev for both), SNLI-VE
# val = dev and test = test (DVP used dev+test for both). Override per dataset/split with config["data_splits"],
# e.g. {"vqa": {"test": ["vqav2_test-dev"]}, "nlvr2": {"test": ["nlvr2_dev", "nlvr2_test1"]}}.
SPLITS: dict[str, dict[str, list[str]]] = {
    "vqa": {"train": ["vqav2_train", "vqav2_trainable_val"], "val": ["vqav2_rest_val"], "test": ["vqav2_test"]},
    "gqa": {"train": ["gqa_train"], "val": ["gqa_val"], "test": ["gqa_test-dev"]},
    "snli_ve": {"train": ["snli_ve_train"], "val": ["snli_ve_dev"], "test": ["snli_ve_test"]},
    "snli": {"train": ["snli_train"], "val": ["snli_dev"], "test": ["snli_test"]},  # METER's own SNLI-VE files
    "nlvr2": {"train": ["nlvr2_train"], "val": ["nlvr2_dev"], "test": ["nlvr2_test1"]},
    "f30k": {"train": ["f30k_caption_karpathy_train"], "val": ["f30k_caption_karpathy_val"],
             "test": ["f30k_caption_karpathy_test"]},
    "coco": {"train": ["coco_caption_karpathy_train", "coco_caption_karpathy_restval"],
             "val": ["coco_caption_karpathy_val"], "test": ["coco_caption_karpathy_test"]},
    # BoolQ has no public test labels: val = its dev set, test = the same (LaVIN-DAS evaluates on dev)
    "boolq": {"train": ["boolq_train"], "val": ["boolq_val"], "test": ["boolq_val"]},
    "scienceqa": {"train": ["scienceqa_train"], "val": ["scienceqa_val"], "test": ["scienceqa_test"]},
    # CommonsenseQA's test answers are not public: val = test = its validation set (LaVIN-DAS's 0-shot test file)
    "csqa": {"train": ["csqa_train"], "val": ["csqa_val"], "test": ["csqa_val"]},
    # GSM8K has train and test only; LaVIN-DAS evaluates on test and has no validation
    "gsm8k": {"train": ["gsm8k_train"], "val": ["gsm8k_test"], "test": ["gsm8k_test"]},
}
