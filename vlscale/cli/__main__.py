"""`python -m vlscale.cli ...` runs the same entry point as the `vlscale` console script."""

from vlscale.cli import main

main()
