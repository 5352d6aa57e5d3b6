"""``python -m segrl``: the ``segrl`` command line."""

from segrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
