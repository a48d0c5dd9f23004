"""Documentation pages and the programs that generate them (`docs.tools`)."""
