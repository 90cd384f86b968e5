"""Deployment helpers (the Hugging Face Space)."""
