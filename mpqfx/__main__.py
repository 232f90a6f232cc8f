"""``python -m mpqfx``: the ``mpqfx`` command, for launchers that start a module in every process
(``torchrun --nproc_per_node 8 -m mpqfx compress ...``)."""

from mpqfx.cli.main import main

if __name__ == "__main__":
    main()
