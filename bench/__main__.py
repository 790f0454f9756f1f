"""``python -m bench``: see bench/suite.py."""

from bench.suite import main

raise SystemExit(main())
