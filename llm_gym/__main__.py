"""`python -m llm_gym` is the `llm-gym` command."""

from llm_gym.app.cli import main

raise SystemExit(main())
