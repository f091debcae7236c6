"""A training run's folder and everything in it, and the one interface every method offers the scripts."""
from runs.folder import Run, Trained, find_trained
from runs.schedule import Schedule

__all__ = ["Run", "Schedule", "Trained", "find_trained"]
