"""Entry point of a worker process: ``python -m engines.worker`` (started by the box)."""

from engines.worker.serve import main

if __name__ == "__main__":
    main()
