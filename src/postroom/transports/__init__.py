"""Transport providers: the SPI and the built-in transports (maildir, pipe)."""
