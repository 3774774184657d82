"""Stand-alone scripts MITuna has beside go_fish (reference/miopen.md §2.11)."""
