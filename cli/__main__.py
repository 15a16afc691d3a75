"""Allow ``python -m svcbus.cli``."""

from .app import main

main()
