"""``python -m gemma_ocr.serving MODEL_DIR [flags]``: the embedded server in the foreground.

``python -m gemma_ocr.serving --die-with-parent SIGNAL -- CMD ...``: run CMD so that it gets SIGNAL when the
process that started it dies (how :class:`~gemma_ocr.serving.ServerProcess` starts a server on Linux).
"""

from __future__ import annotations

import sys

from gemma_ocr.serving.cli import main
from gemma_ocr.serving.process import exec_dying_with_parent

if __name__ == "__main__":
    if sys.argv[1:2] == ["--die-with-parent"]:
        exec_dying_with_parent(sys.argv[2:])
    else:
        sys.exit(main())
