# nar — thin wrappers around the `nar` CLI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NAR := $(VENV)/bin/nar
GPUS ?= 0
NODES ?= 1
DATA ?=
CKPT ?=
INIT ?=
TOKENIZER ?=
REF ?=
INCEPTION ?=
ADM_METRICS = $(if $(INCEPTION),[fid$(comma)sfid$(comma)is$(comma)pr],[fid$(comma)sfid$(comma)pr])
comma := ,
MODEL ?= l
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-slow test-all lint bench bench-train bench-cpu demo demo-video demo-t2i \
        data-embedded train-tokenizer train-imagenet train-ucf101 train-t2i eval-imagenet \
        eval-ucf101 tensorboard ablate-heads clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed ## create .venv and install nar with its dev extras

test: $(VENV)/.installed ## run the test suite (CPU, fast; creates the venv first)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed ## run only the slow tests
	$(PY) -m pytest -q -m slow $(ARGS)

test-all: $(VENV)/.installed ## run every test, slow and gpu included
	$(PY) -m pytest -q -m "" $(ARGS)

lint: $(VENV)/.installed ## ruff check over the whole repository (src, tests, benchmarks, experiments, notebooks)
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed ## GPU sampling benchmark, one run: NAR-L CFG 2.0 bf16, batch 64 and 256: fast, compiled, wavefront, fp8 weights, fp8 KV cache, reference, raster, PAR-4x/16x, tokens only and tokens + VQ-16 decode, % of peak
	$(NAR) bench --preset NAR-L --batch 64 256 --guidance 2.0 --dtype bf16 --device cuda --reference --schedules nar raster par-2x2 par-4x4 --variants compile wavefront wavefront+compile fp8+wavefront+compile fp8kv+wavefront+compile fp8+fp8kv+wavefront+compile --decode-with compile wavefront+compile --tokenizer-decode --decode-dtype bf16 fp32 --decode-compile $(ARGS)

bench-train: $(VENV)/.installed ## training throughput and MFU on the GPU: NAR-L, per-device batch 32 (the 8-GPU recipe), bf16, compiled
	$(PY) benchmarks/train_throughput.py --preset NAR-L --batch 32 --dtype bf16 --compile --device cuda $(ARGS)

bench-cpu: $(VENV)/.installed ## CPU benchmark: NAR (and its wavefront) vs raster vs PAR-4x/16x on a small trunk, 16x16 grid, batch 8, bf16, 5 alternating rounds (ARGS="--dtype fp32")
	$(NAR) bench --preset bench-cpu --batch 8 --guidance 1.0 --dtype bf16 --device cpu --reference --warmup 3 --iters 2 --rounds 5 --schedules nar raster par-2x2 par-4x4 --variants wavefront $(ARGS)

data-embedded: $(VENV)/.installed ## build the embedded emoji/atari/shapes shards under data/
	$(NAR) data embedded --out data/embedded $(ARGS)

demo: $(VENV)/.installed ## fresh clone -> emoji shards, tiny tokenizer, tiny NAR, samples and FID on CPU (ARGS=--compare-raster adds the baseline)
	$(NAR) demo --domain emoji $(ARGS)

demo-video: $(VENV)/.installed ## the demo on Atari game clips (FVD proxy)
	$(NAR) demo --domain atari $(ARGS)

demo-t2i: $(VENV)/.installed ## text-to-image demo on shapes captions
	$(NAR) demo --domain shapes-t2i $(ARGS)

train-tokenizer: $(VENV)/.installed ## train a VQ tokenizer: DATA=emoji|atari|imagenet|ucf101
	$(NAR) train-tokenizer --data $(or $(DATA),emoji) --gpus $(GPUS) --nodes $(NODES) $(ARGS)

train-imagenet: | $(VENV)/.installed ## train NAR on ImageNet token shards: DATA=path [MODEL=b|m|l|xl|xxl (xl/xxl: FSDP)]
	@if [ -z "$(DATA)" ]; then echo "train-imagenet needs DATA=<folder of ImageNet token shards, made by 'nar data tokens'>"; exit 2; fi
	$(NAR) train --config experiments/imagenet/nar_$(MODEL).yaml --gpus $(GPUS) --nodes $(NODES) --resume data.root=$(DATA) $(if $(TOKENIZER),tokenizer.path=$(TOKENIZER)) $(ARGS)

train-ucf101: | $(VENV)/.installed ## train NAR-L on UCF-101 token shards, or on whole videos tokenized as it trains (a fresh window per visit, the official loader): DATA=path [TOKENIZER=video vq.pt]
	@if [ -z "$(DATA)" ]; then echo "train-ucf101 needs DATA=<UCF-101 token shards (nar data tokens), or whole videos (nar data ucf101 --whole-videos) with TOKENIZER=<video vq.pt>>"; exit 2; fi
	$(NAR) train --config experiments/ucf101/nar_l.yaml --gpus $(GPUS) --nodes $(NODES) --resume data.root=$(DATA) $(if $(TOKENIZER),tokenizer.path=$(TOKENIZER)) $(ARGS)

train-t2i: | $(VENV)/.installed ## text-to-image NAR-XL, 256 px: DATA=path; stage 2 (512 px): also INIT=<stage-1 ckpt>
	@if [ -z "$(DATA)" ]; then echo "train-t2i needs DATA=<folder of caption token shards, made by 'nar data tokens --text-encoder t5'>"; exit 2; fi
	$(NAR) train --config experiments/t2i/nar_xl.yaml $(if $(INIT),--config experiments/t2i/nar_xl_512.yaml) --gpus $(GPUS) --nodes $(NODES) $(if $(INIT),init_from=$(INIT)) data.root=$(DATA) $(ARGS)

eval-imagenet: | $(VENV)/.installed ## 50k samples, FID/sFID/precision/recall (+IS with INCEPTION=<Inception with its classifier>): CKPT=path TOKENIZER=vq.pt REF=ADM VIRTUAL_imagenet256_labeled.npz (the paper's protocol) or DATA=real image shards
	@if [ -z "$(CKPT)" ]; then echo "eval-imagenet needs CKPT=<NAR checkpoint (ours or official .pt)>, TOKENIZER=<VQ-16 .pt> and REF=<ADM VIRTUAL_imagenet256_labeled.npz> (or DATA=<ImageNet image shards>, not the paper's reference)"; exit 2; fi
	$(NAR) evaluate --config experiments/imagenet/nar_$(MODEL).yaml --ckpt $(CKPT) --per-class 50 --gpus $(GPUS) --nodes $(NODES) $(if $(TOKENIZER),tokenizer.path=$(TOKENIZER)) $(if $(REF),eval.reference_stats=$(REF) eval.metrics=$(ADM_METRICS)) $(if $(INCEPTION),eval.inception_weights=$(INCEPTION)) $(if $(DATA),eval.real_root=$(DATA) eval.num_real=50000) $(ARGS)

eval-ucf101: | $(VENV)/.installed ## FVD on UCF-101 (10k samples vs 10k train clips drawn at random, eval.real_seed; sample i takes real clip i's class, as NAR-videos): CKPT=path TOKENIZER=video vq.pt DATA=clip shards (nar data ucf101 --frames 16 --size 128 --clips-per-video 0: every non-overlapping window, the official real pool) [ARGS=eval.i3d_path=i3d.pt]
	@if [ -z "$(CKPT)" ]; then echo "eval-ucf101 needs CKPT=<NAR video checkpoint>, TOKENIZER=<video VQ .pt> and DATA=<UCF-101 clip shards>"; exit 2; fi
	$(NAR) evaluate --config experiments/ucf101/nar_l.yaml --ckpt $(CKPT) --num-samples 10000 --gpus $(GPUS) --nodes $(NODES) $(if $(TOKENIZER),tokenizer.path=$(TOKENIZER)) $(if $(DATA),eval.real_root=$(DATA) eval.real_split=train eval.num_real=10000 eval.labels=real) $(ARGS)

ablate-heads: $(VENV)/.installed ## head ablation grid (CPU emoji; GRID=heads_imagenet GPUS=8 DATA=.. TOKENIZER=.. on a cluster)
	$(NAR) ablate --config experiments/ablations/$(or $(GRID),heads_emoji).yaml --gpus $(GPUS) --nodes $(NODES) $(if $(DATA),data.root=$(DATA)) $(if $(TOKENIZER),tokenizer.path=$(TOKENIZER)) $(ARGS)

tensorboard: $(VENV)/.installed ## serve TensorBoard over runs/ (PORT=6006)
	$(VENV)/bin/tensorboard --logdir runs --bind_all --port $(or $(PORT),6006)

clean: ## remove caches (keeps .venv and data)
	rm -rf .pytest_cache .ruff_cache .hypothesis
