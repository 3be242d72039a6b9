"""ByteNet (Kalchbrenner et al., "Neural Machine Translation in Linear Time", arXiv:1610.10099)."""
