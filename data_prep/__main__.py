"""`python -m data_prep build|stats`: see data_prep/cli.py."""
import sys

from data_prep.cli import main

# The guard matters: the build's "spawn" worker processes re-import the main module.
if __name__ == "__main__":
  sys.exit(main())
