#!/usr/bin/env python3
"""The settlement-file import alone: ``loyalty import-transactions`` on a generated file of
1,000,000 rows over 20,000 members (enrolled through the API), against a plain ``COPY`` of the
same file in the same run; target 10,000 rows/s. It is ``bench/accrual.py --skip pgbench --skip
api`` (see bench/README.md); every option of that script applies::

    .venv/bin/python bench/settlement_import.py [--rows 1000000] [--import-members 20000] [--import-parallel 2]
"""

from __future__ import annotations

import sys

import accrual  # bench/accrual.py, beside this file

if __name__ == "__main__":
    sys.exit(accrual.main(["--skip", "pgbench", "--skip", "api", *sys.argv[1:]]))
