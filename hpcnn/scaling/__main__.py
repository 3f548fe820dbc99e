"""``python -m hpcnn.scaling {run,point,model,report} [options]``; ``--help`` on each."""

import importlib
import sys

COMMANDS = {
    "run": "hpcnn.scaling.run",
    "point": "hpcnn.scaling.point",
    "model": "hpcnn.scaling.model",
    "report": "hpcnn.scaling.report",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"error: usage: python -m hpcnn.scaling {{{','.join(COMMANDS)}}} [options]"
              + (f" (unknown command {argv[0]!r})" if argv else ""), file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
