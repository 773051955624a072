"""Schemas declared once, as StructTypes, enforced where data enters and where it leaves."""
