"""Reconstruction quality of a saved tokenizer on one split of a shard folder: PSNR, SSIM, codebook
usage and rFID (nar.metrics' InceptionV3; per frame for videos), the numbers validation logs.

    python experiments/tokenizers/eval_recon.py --tokenizer runs/tokenizer-emoji/tokenizer.pt \\
        --root data/embedded/emoji --split val
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from nar.data.datamodules import ImageDataConfig, ImageShardDataModule, VideoDataConfig, VideoShardDataModule
from nar.logconfig import configure_logging
from nar.progress import Progress
from nar.tokenizers import load_tokenizer
from nar.tokenizers.losses import frames_as_images
from nar.tokenizers.usage import CodebookUsage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="tokenizer.pt, a TokenizerModule .ckpt or an official VQ")
    parser.add_argument("--root", required=True, help="image or video shard folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-rfid", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    configure_logging()  # the progress lines go to stderr; the JSON alone to stdout
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    tokenizer = load_tokenizer(args.tokenizer).to(device)
    cfg = tokenizer.config
    if cfg.kind == "image":
        data = ImageShardDataModule(ImageDataConfig(root=args.root, image_size=cfg.image_size, num_workers=0))
    else:
        data = VideoShardDataModule(VideoDataConfig(root=args.root, image_size=cfg.image_size, num_workers=0))
    dataset = data.eval_dataset(args.split)
    loader = DataLoader(dataset, batch_size=args.batch)

    psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    usage = CodebookUsage(tokenizer.codebook_size).to(device)
    fid = None
    if not args.no_rfid:
        from nar.metrics.fidelity import ImageFidelity

        fid = ImageFidelity(("fid",)).to(device)
    start, count = time.perf_counter(), 0
    # A bar on a terminal, else a log line every 30 s (minutes on CPU: encode, decode and Inception features).
    unit = "img" if cfg.kind == "image" else "clip"
    with torch.no_grad(), Progress(dataset.num_samples(), f"reconstructing {args.split}", unit=unit) as progress:
        for batch in loader:
            x = batch["image" if cfg.kind == "image" else "video"].to(device)
            codes = tokenizer.encode(x)
            x_hat = tokenizer.decode(codes).clamp(-1, 1)
            real, fake = frames_as_images(x), frames_as_images(x_hat)
            psnr.update((fake + 1) / 2, (real + 1) / 2)
            ssim.update((fake + 1) / 2, (real + 1) / 2)
            usage.update(codes)
            if fid is not None:
                fid.update(real, real=True)
                fid.update(fake, real=False)
            count += x.shape[0]
            progress.update(x.shape[0])
    result = {"tokenizer": args.tokenizer, "root": args.root, "split": args.split, "samples": count,
              "grid": list(cfg.grid), "psnr": float(psnr.compute()), "ssim": float(ssim.compute()),
              "codebook_usage": float(usage.compute()["usage"]),
              "seconds": round(time.perf_counter() - start, 1)}
    if fid is not None:
        result["rfid"] = float(fid.compute()["fid"])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
