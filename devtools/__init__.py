"""Developer tools: embedded dev mode, tiny offline InternVL builder, config reference, harness."""
