"""Custom operators of the SgMg model."""
