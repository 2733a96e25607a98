"""Data layer: arrow reading, tokenizer, transforms, datasets, collate and the Lightning datamodule.

Submodules are imported on use (``from vlpeft.data.datamodule import MTDataModule``) so that importing
``vlpeft.data.normalize`` alone stays light.
"""
