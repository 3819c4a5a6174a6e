"""``python -m meteor_cli`` — the same as the ``meteor`` console script."""

from meteor_cli.cli.app import main

if __name__ == "__main__":
    main()
