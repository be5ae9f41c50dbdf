"""`python3 -m scmflow.agent OP SPEC-JSON | --serve`: the agent's entry (see `protocol.main`)."""

import sys

from .protocol import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
