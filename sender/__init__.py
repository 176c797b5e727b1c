"""The webhook sender process (CPU only): signs and sends what core/webhooks.py records."""
