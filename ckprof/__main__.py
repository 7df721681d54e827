"""``python -m ckprof ...``: the ``ckprof`` command (e.g. ``python -m ckprof run train.py``,
or under torchrun: ``torchrun --nproc-per-node 2 -m ckprof run train.py``)."""

from __future__ import annotations

from ckprof.cli.main import main

if __name__ == "__main__":
    main()
