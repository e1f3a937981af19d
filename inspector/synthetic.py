"""`python -m inspector.synthetic --out DIR`: the command that writes a synthetic defect data set, kept
where users and docs know it. The generator is :mod:`inspector.quality.synthetic`."""

import sys

from .quality.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
