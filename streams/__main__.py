"""`python -m streams` runs the partner-guard command line."""

from streams.cli import main

if __name__ == "__main__":
    main()
