"""``nar sample`` — images from prompts (text-to-image) or class ids, from our checkpoints or official ones.

    nar sample --ckpt runs/demo-shapes-t2i/nar/checkpoints/last.ckpt --prompt "a photo of a red circle" --out out/
    nar sample --ckpt t2i_XL.pt --official --n-head 20 --grid 16 16 --tokenizer vq_ds16_t2i.pt \\
        --text-encoder t5 --text-encoder-path /models/flan-t5-xl --prompt-file prompts.txt --guidance 7.5 --out out/
    nar sample --ckpt runs/demo-emoji/nar/checkpoints/last.ckpt --classes 1 2 3 --n-per-prompt 4 --out out/

Writes ``<i>_<j>.png`` (sample ``j`` of prompt/class ``i``) with the prompt beside it in
``<i>_<j>.txt`` under ``<out>/images/`` (so ``nar eval-samples <out>/images --metrics text`` scores shapes
prompts), batch by batch as they are sampled, ``<out>/grid.png`` (the first ``--grid-samples``, a row per prompt)
and ``samples.json`` (the job's settings; ``"complete": true`` once every sample is written). A job stopped part
way goes on where it stopped when the same command is run again; an ``images/`` holding anything else is refused
unless ``--overwrite``. Our checkpoints carry the model, tokenizer, sampling and text-encoder settings;
official ``.pt`` files need ``--official`` with ``--n-head`` (and ``--grid``) or ``--config``.
The work is :func:`nar.workflows.sample.run_sample`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import shlex

GUIDANCE_HELP = ("classifier-free guidance scale, 1 = off (default: the run's sampling.cfg_scale for our "
                 "checkpoints; official checkpoints: 7.5 text-to-image, 2.0 class-conditional, the official "
                 "samplers' settings, unless a --config file sets sampling.cfg_scale)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample PNGs (+ a grid) from prompts or class ids with a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our Lightning .ckpt (EMA weights) or an official generator .pt")
    p.add_argument("--official", action="store_true", help="--ckpt is an official NAR .pt (t2i or c2i)")
    p.add_argument("--n-head", type=int, default=None, help="official checkpoints: attention heads (not stored)")
    p.add_argument("--grid", type=int, nargs="+", default=None, help="official checkpoints: token grid (default 16 16)")
    p.add_argument("--config", action="append", default=[],
                   help="run YAML(s) describing an official checkpoint's model (instead of --n-head/--grid)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file/preset (default: the one the run used)")
    p.add_argument("--tokenizer-config", default=None, help="preset describing an official VQ checkpoint")
    p.add_argument("--prompt", action="append", default=[], help="a caption (repeat for several)")
    p.add_argument("--prompt-file", default=None, help="one caption per line (blank lines and '#' comments skipped)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class ids or class names of the training data (class-conditional models)")
    p.add_argument("--n-per-prompt", type=int, default=1, help="samples per prompt / class (default: %(default)s)")
    p.add_argument("--guidance", "--cfg", dest="guidance", type=float, default=None, help=GUIDANCE_HELP)
    p.add_argument("--temperature", type=float, default=None, help="(default: the run's sampling.temperature, else 1)")
    p.add_argument("--top-k", type=int, default=None, help="(default: the run's sampling.top_k, else 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="(default: the run's sampling.top_p, else 1 = off)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the job, >= 0: batch b draws from a seed hashed from (seed, b), so seeds share no "
                        "batch; the samples depend on --batch-size too (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--text-encoder", choices=("minilm", "t5"), default=None,
                   help="text encoder kind (default: the run's text.kind; official t2i: t5)")
    p.add_argument("--text-encoder-path", default=None, help="local text-encoder folder (t5: FLAN-T5-XL)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--compile-decoder", action="store_true",
                   help="on a GPU, torch.compile the tokenizer's decoder (pays off for many batches)")
    p.add_argument("--sampler", default="fast",
                   help="sampling path: fast, or options joined by '+' from compile, autotune, wavefront (two batches "
                        "in flight; class ids; other draws for a seed than fast), fp8 (float8 block weights, Hopper), "
                        "fp8kv (float8 KV caches), "
                        "e.g. wavefront+compile (default: %(default)s)")
    p.add_argument("--grid-samples", type=int, default=64,
                   help="grid.png shows the first N samples; 0 = no grid (default: %(default)s)")
    p.add_argument("--out", required=True,
                   help="output folder; a job stopped part way goes on there with the same command (its samples.json "
                        "says \"complete\": false); refused when its images/ holds other files, unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier job's samples in --out: first removes its samples.json and grid.png, then "
                        "the <i>_<j>.png/.gif/.txt files nar sample writes in images/ (any other file there is left, "
                        "and eval-samples reads it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nar.workflows.sample import SampleJob, run_sample

    job = SampleJob(
        ckpt=args.ckpt, out=args.out, official=args.official, n_head=args.n_head, grid=args.grid,
        config=list(args.config), tokenizer=args.tokenizer, tokenizer_config=args.tokenizer_config,
        prompts=list(args.prompt), prompt_file=args.prompt_file, classes=args.classes,
        n_per_prompt=args.n_per_prompt, guidance=args.guidance, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, batch_size=args.batch_size, text_encoder=args.text_encoder,
        text_encoder_path=args.text_encoder_path, device=args.device, threads=args.threads,
        compile_decoder=args.compile_decoder, sampler=args.sampler, overwrite=args.overwrite,
        grid_samples=args.grid_samples, command="nar " + shlex.join(getattr(args, "argv", None) or ["sample"]))
    result = run_sample(job)
    print(f"{len(result.records)} samples in {result.out} (grid: {result.grid or 'none'})")
    return 0
