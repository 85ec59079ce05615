"""`python -m llmprune ...`: the same as the `llmprune` command (handy where the script is not on PATH)."""
import sys

from .cli import main

sys.exit(main())
