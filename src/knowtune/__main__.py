"""``python -m knowtune``: the command-line interface."""

from knowtune.cli import main

if __name__ == "__main__":
    main()
