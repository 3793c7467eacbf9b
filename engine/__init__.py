"""The training engine's helpers: scale presets, the flags every command shares and the one place
that names run directories (``presets``); optimizers by name (``optim``) and LARS (``lars``);
torchrun / DDP (``distributed``). The training loop itself is ``simclr.fit``."""
