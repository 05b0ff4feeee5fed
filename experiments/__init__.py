"""The experiment YAMLs, shipped inside the installed package as ``nar.experiments`` (package data).

Commands accept a path or a packaged name: ``nar train --config demo/emoji.yaml`` works from a wheel as
from a checkout (:func:`nar.config.config_path`).
"""
