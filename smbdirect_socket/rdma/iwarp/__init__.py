"""Software iWARP: MPA, DDP and RDMAP as Linux siw speaks them."""
