"""The main job: every stage in order, each kept when its output is current."""
