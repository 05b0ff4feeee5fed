"""Pipelines, one per job (demo, tokenizer training, generator training and evaluation, ablations,
sampling to files). ``nar.cli`` parses arguments and calls these; nothing below this layer imports them."""
