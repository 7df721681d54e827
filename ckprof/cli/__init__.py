"""Command line interface (click). Commands stay thin over the library."""
