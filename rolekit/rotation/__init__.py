"""Rotation: the committed login state, its phases and the guards."""
