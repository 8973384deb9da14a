"""``python -m drivers.mock``: serve the mock in the foreground (see ``drivers.mock.server.main``)."""

from drivers.mock.server import main

if __name__ == "__main__":
    main()
