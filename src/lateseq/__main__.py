"""``python -m lateseq``: the ``lateseq`` command line, where its script is not on PATH."""

from lateseq.cli import main

main()
