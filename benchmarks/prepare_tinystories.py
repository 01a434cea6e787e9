"""Kept for old commands: the data preparation now lives in the package, `python -m slmbook.prepare`.

    python benchmarks/prepare_tinystories.py --stories-dir FOLDER   # = python -m slmbook.prepare --stories-dir FOLDER

Every option is slmbook.prepare's (`python -m slmbook.prepare --help`); the token files go to the
data home (`slmbook.prepare.data_dir`), where `python -m slmbook.train` and chapter 14 look.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout without an install

from slmbook.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
