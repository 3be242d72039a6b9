"""The Kanerva Machine (Wu, Wayne, Graves and Lillicrap, arXiv:1804.01756, ICLR 2018)."""
