"""tuna: distributed GPU kernel tuning (a re-implementation of AMD's MITuna)."""

__version__ = "0.1.0"
