"""Stage 3: the label-efficiency study (the sweep, tables and plots)."""
