#!/usr/bin/env python3
"""The contention load benchmark, the main job: ``python scripts/load.py [--quick | --full] [--dir DIR]``.

A thin wrapper over ``nori_wal.load`` (the same engine as ``nori-wal load``);
see ``--help`` and that module's docstring for what it measures.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nori_wal.load import main

if __name__ == "__main__":
    sys.exit(main())
