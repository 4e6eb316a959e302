"""Evaluation: the threaded client of a served model, the engines behind one interface, transcription."""
