#!/usr/bin/env bash
# The lent GPU machines have torch, lightning and torchmetrics but not omegaconf or webdataset, and
# cannot reach a package index. Copy those pure-Python packages from .venv into .device-site/ and name
# it in the device call's `carry`; benchmarks/gpu_checks.sh puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
SP=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf .device-site && mkdir -p .device-site
for pkg in omegaconf webdataset braceexpand; do cp -r "$SP/$pkg" .device-site/; done
find .device-site -name __pycache__ -prune -exec rm -rf {} +
du -sh .device-site
