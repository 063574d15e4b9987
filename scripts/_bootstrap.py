"""Make the library beside ``scripts/`` importable when it is not pip-installed.

Snakemake puts ``scripts/`` on ``sys.path`` of every ``script:`` job; importing this module adds
the repository root, so jobs also run inside a rule's conda env (``--sdm conda``), where
saliency-fingerprints itself is not installed.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.append(ROOT)
