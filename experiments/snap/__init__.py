"""SnAp / RTRL / UORO / BPTT online-training experiments (Menick et al. 2021)."""
