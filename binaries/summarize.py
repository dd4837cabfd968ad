"""Print a Markdown table of finished runs: ``python binaries/summarize.py LOGDIR [LOGDIR ...]``."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from keras_sparse.report import markdown_table  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python binaries/summarize.py LOGDIR [LOGDIR ...]")
    print(markdown_table(sys.argv[1:]))
