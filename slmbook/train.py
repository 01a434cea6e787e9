"""Train from the command line: the same `slmbook.training.Trainer` the notebooks call (chapter 14).

`python -m slmbook.train` is the command readers type; the command line itself lives in
`slmbook.train_cli` (a name that says it is the CLI, not the library `slmbook.training`). This module
only runs it, and keeps the names the notebooks import from here.
"""

import sys

# Chapters 9, 11, 12 and 14 import these from slmbook.train.
from slmbook.train_cli import PRESET_TOKENIZERS, data_files, main, sample_data  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
