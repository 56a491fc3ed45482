"""The operator's live console (Textual)."""
