"""The Example library (``go_fish.py example``): a job runs rocminfo on a GPU host."""
