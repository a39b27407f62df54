"""The software iWARP provider: MPA, DDP and RDMAP as Linux siw speaks them, over TCP."""
