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
    # VALUE video-text (write_arrow tvqa|how2qa|tvc|yc2c): the split names VL-Adapter's multitask_video.py reads
    "tvqa": {"train": ["tvqa_train"], "val": ["tvqa_val"], "test": ["tvqa_test_public", "tvqa_test_release"]},
    "how2qa": {"train": ["how2qa_train_release"], "val": ["how2qa_val_release"],
               "test": ["how2qa_test_public_release"]},
    "tvc": {"train": ["tvc_train_release"], "val": ["tvc_val_release"], "test": ["tvc_test_release"]},
    "yc2c": {"train": ["yc2c_train_release"], "val": ["yc2c_val_release"], "test": ["yc2c_test_release"]},
    # CommonsenseQA's test answers are not public: test = its validation set (LaVIN-DAS's 0-shot test file). GSM8K has
    # train and test only. val = the training set for both, as LaVIN-DAS scores its search rounds on training data
    # for the language-only tasks: rewards and checkpoint selection never see the set the run reports
    "csqa": {"train": ["csqa_train"], "val": ["csqa_train"], "test": ["csqa_val"]},
    "gsm8k": {"train": ["gsm8k_train"], "val": ["gsm8k_train"], "test": ["gsm8k_test"]},
}
