"""NoisyNet (Fortunato et al., arXiv:1706.10295): noisy layers, DQN/Dueling/A2C agents on gymnax."""
