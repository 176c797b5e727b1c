"""Developer tools: the embedded dev mode, the tiny offline InternVL builder, the config reference."""
