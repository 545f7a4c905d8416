"""Fault drills on the local stack (`python -m drills`, `make drills`): see drills/README.md."""
