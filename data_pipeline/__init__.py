"""Data pipeline for multi-pair temporal sentence grounding.

Readers for the standard TSG datasets, validation, WebDataset shard writing/reading
(one sample per video group) and the padded batch collate. Imports nothing from
`mktn` or `cluster` (dependencies point one way: data_pipeline <- mktn <- cluster).
"""
