"""udpxfer: move files over UDP and measure exactly what the network did to them."""

__version__ = "0.1.0"
