"""Data structures: BoxList (boxes of one image with fields) and ImageList (padded image batch)."""
